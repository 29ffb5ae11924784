"""Runs regions compiled by TVM: one shared library in which every region is a function of
one Relax VM executable (numpy and TVM's runtime only, no torch).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

import numpy as np

from dycomp.runtime.errors import ArtifactError


class _HideTorch:
    """Meta-path finder that makes `import torch` fail (see `import_tvm`)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is hidden while dycomp imports TVM")
        return None


def import_tvm():
    """`tvm`, imported without PyTorch. tvm_ffi imports torch eagerly when it can (about a
    second, and a deployed process must not need it); it tolerates an ImportError, so torch
    is hidden for the import unless the process has loaded it already."""
    # TVM's pool workers spin after each parallel region; beside PyTorch or ONNX Runtime
    # threads that made static_resnet take 1.8-8.4 ms instead of 1.7-2.0 ms (2 cores).
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    if "tvm" in sys.modules or "torch" in sys.modules:
        import tvm
        from tvm import relax  # noqa: F401

        return tvm
    hide = _HideTorch()
    sys.meta_path.insert(0, hide)
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError as e:
        raise ArtifactError(f"this artifact needs TVM's runtime (pip install apache-tvm): {e}"
                            ) from None
    finally:
        sys.meta_path.remove(hide)
    return tvm


def set_threads(tvm, threads: int) -> None:
    """Size TVM's CPU thread pool (process-wide)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    tvm.get_global_func("runtime.config_threadpool")(1, threads)


class TvmExecutor:
    """Runs regions as functions of one compiled Relax library.

    `library`: the exported shared library (bytes, or a path); `signatures`: region ->
    ([numpy dtype per input], number of outputs). Thread-safe: each thread gets its own
    virtual machine over the one loaded library."""

    def __init__(self, library: bytes | str | os.PathLike,
                 signatures: dict[str, tuple[list, int]], threads: int = 2):
        self.tvm = tvm = import_tvm()
        set_threads(tvm, threads)
        self.lib = _load_library(tvm, library)
        self.signatures = {r: ([np.dtype(d) for d in dts], n) for r, (dts, n) in
                           signatures.items()}
        self._local = threading.local()
        self._functions()  # fail now, not on the first call, if a function is missing

    def _functions(self) -> dict:
        fns = getattr(self._local, "fns", None)
        if fns is None:
            vm = self.tvm.relax.VirtualMachine(self.lib, self.tvm.cpu())
            try:
                fns = {r: vm[r] for r in self.signatures}
            except Exception as e:
                raise ArtifactError(f"the TVM library lacks a region function: {e}") from None
            self._local.vm, self._local.fns = vm, fns
        return fns

    def __call__(self, region: str, *args) -> tuple[np.ndarray, ...]:
        dtypes, n_out = self.signatures[region]
        if len(args) != len(dtypes):
            raise TypeError(f"subgraph {region} takes {len(dtypes)} inputs, got {len(args)}")
        out = self._functions()[region](*[self._tensor(a, d) for a, d in zip(args, dtypes)])
        if n_out == 1 and not isinstance(out, (tuple, list)) and hasattr(out, "numpy"):
            out = (out,)
        return tuple(np.from_dlpack(o) for o in out)  # no copy: the array keeps o alive

    def _tensor(self, a, dtype):
        """A TVM tensor sharing memory with a numpy array (a copy only when the array is
        not contiguous and 64-byte aligned, as DLPack import requires). Copying with
        `tvm.runtime.tensor` costs ~30 us per input, sharing ~1 us."""
        a = np.asarray(a, dtype)
        if not (a.flags.c_contiguous and a.ctypes.data % _ALIGN == 0 and a.flags.writeable):
            a = _aligned_copy(a)
        try:
            return self.tvm.runtime.from_dlpack(a)
        except Exception:  # a dtype DLPack cannot carry
            return self.tvm.runtime.tensor(np.ascontiguousarray(a))


_ALIGN = 64


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    buf = np.empty(a.nbytes + _ALIGN, np.uint8)
    start = -buf.ctypes.data % _ALIGN
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _load_library(tvm, library):
    """Load a shared library; bytes are written to a private temporary file first (the
    loader needs a path; the bytes are the ones whose hash was checked)."""
    if not isinstance(library, bytes):
        return tvm.runtime.load_module(os.fspath(library))
    with tempfile.TemporaryDirectory(prefix="dycomp-tvm-") as tmp:
        path = os.path.join(tmp, "regions.so")
        with open(path, "wb") as f:
            f.write(library)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o500)
        return tvm.runtime.load_module(path)
