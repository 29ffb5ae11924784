"""The `dycomp` command line: compile | run | inspect.

The CLI only maps flags onto small typed configs (validated in `__post_init__`) and calls the
Python API. `run` and `inspect` never import torch: an artifact deploys without PyTorch.
Errors are one `error: ...` line on stderr (exit 2 for usage errors, 1 otherwise);
`DYCOMP_DEBUG=1` (or 2) adds the traceback and debug logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

import dycomp
from dycomp.errors import DycompError, UnsupportedError
from dycomp.frontend.dyndims import parse_cli
from dycomp.logs import configure as configure_logging
from dycomp.logs import debug_level
from dycomp.runtime.outputs import flatten_outputs
from dycomp.target import DTYPES, Target, TargetError

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "tvm", "torch")
SAVEABLE = ("onnx", "tvm")
_PLAIN = {"markup": False, "highlight": False, "soft_wrap": True}  # machine-readable lines


class UsageError(DycompError):
    """A command line that cannot work as written (exit status 2)."""


USAGE_ERRORS = (UsageError, TargetError)


# -- configs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputShape:
    """One `--input` of `dycomp compile`: a shape and a dtype name, e.g. `1x3x32x32:float32`."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r} in --input; use one of "
                             f"{', '.join(DTYPES)}")
        if not all(isinstance(d, int) and d >= 0 for d in self.shape):
            raise UsageError(f"--input shape {self.shape} must be non-negative integers")

    @classmethod
    def parse(cls, text: str) -> InputShape:
        dims, _, dtype = text.partition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise UsageError(f"bad --input {text!r}: the shape must be integers joined by 'x' "
                             f"with an optional dtype, like 1x3x32x32 or 4x16:int64") from None
        return cls(shape, dtype or "float32")


@dataclass(frozen=True)
class CompileConfig:
    """`dycomp compile`: what to load, how to compile it and where to write the artifact."""

    target: Target
    output: Path | None = None
    method: str = "forward"
    inputs: tuple[InputShape, ...] = ()
    checkpoint: Path | None = None
    backend: str = "onnx"
    threads: int | None = None
    check: bool = True
    tune_trials: int | None = None
    tune_db: Path | None = None
    tune_rpc: str | None = None
    strict: bool = False
    prune: float | None = None
    prune_allocation: str = "uniform"
    prune_round_to: int | str = 1
    quantize: str | None = None
    calib: Path | None = None
    no_opt: tuple[str, ...] = ()
    explain_opts: bool = False
    selectors: tuple[str, ...] = ()  # --selector NAME=V1,V2,...: one sub-network per value
    dynamic: tuple[str, ...] = ()  # --dynamic x:0=batch
    batch_variants: bool = False  # --batch-variants
    fuse_branches: bool = True  # --no-fuse-branches

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.output is not None and self.backend not in SAVEABLE:
            raise UsageError(f"-o needs --backend onnx or tvm: the {self.backend} backend "
                             f"compiles in-process only and cannot be saved (drop -o to see "
                             f"the summary)")
        tvm_only = {"--tune-trials": self.tune_trials is not None,
                    "--tune-db": self.tune_db is not None,
                    "--tune-rpc": self.tune_rpc is not None, "--strict": self.strict}
        used = [flag for flag, given in tvm_only.items() if given]
        if used and self.backend != "tvm":
            raise UsageError(f"{', '.join(used)} need{'s' * (len(used) == 1)} --backend tvm")
        if self.tune_trials is not None and self.tune_trials < 0:
            raise UsageError(f"--tune-trials must be >= 0, got {self.tune_trials}")
        if self.tune_db is not None and self.tune_db.exists() and not self.tune_db.is_dir():
            raise UsageError(f"--tune-db {str(self.tune_db)!r} is a file; give a directory")
        if self.tune_rpc is not None:
            _check_tune_rpc(self.tune_rpc, self.tune_trials)
        if not self.method.isidentifier():
            raise UsageError(f"--method {self.method!r} is not a method name")
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise UsageError(f"checkpoint {str(self.checkpoint)!r} does not exist")
        if self.prune is not None and not 0 < self.prune < 1:
            raise UsageError(f"--prune must be a fraction between 0 and 1, got {self.prune}")
        if self.prune is None and self.prune_allocation != "uniform":
            raise UsageError("--prune-allocation needs --prune")
        if self.prune is None and self.prune_round_to != 1:
            raise UsageError("--prune-round-to needs --prune")
        if self.quantize is not None and self.backend != "onnx":
            raise UsageError("--quantize needs --backend onnx")
        if self.calib is not None:
            if self.quantize != "int8":
                raise UsageError("--calib needs --quantize int8")
            if self.calib.suffix != ".npz" or not self.calib.is_file():
                raise UsageError(f"--calib {str(self.calib)!r} must be an existing .npz file")
        _check_threads(self.threads)
        if self.selectors:
            _check_selectors(self)
        try:
            parse_cli(list(self.dynamic))
        except UnsupportedError as e:
            raise UsageError(str(e)) from None
        from dycomp.passes import DYNAMIC_PASSES

        for name in self.no_opt:
            if name != "all" and name not in DYNAMIC_PASSES:
                raise UsageError(f"--no-opt {name!r}: unknown optimization; use one of "
                                 f"{', '.join(DYNAMIC_PASSES)} or all")

    @property
    def optimize(self):
        """`dycomp.compile(optimize=...)` for the --no-opt flags."""
        from dycomp.passes import DYNAMIC_PASSES

        return [] if "all" in self.no_opt else [n for n in DYNAMIC_PASSES
                                                 if n not in self.no_opt]

    def passes(self, examples: tuple) -> list:
        """The Prune/Quantize configs the flags ask for."""
        from dycomp.passes import Prune, Quantize

        out = []
        if self.prune is not None:
            out.append(Prune(self.prune, allocation=self.prune_allocation,
                             round_to=self.prune_round_to))
        if self.quantize is not None:
            calib = None if self.calib is None else _calibration(self.calib, examples)
            out.append(Quantize(self.quantize, calibration=calib))
        return out


def _check_selectors(cfg: CompileConfig) -> None:
    """--selector text parses, and no flag that compiles one model differently is given."""
    from dycomp.cli_selectors import parse_selector_flags

    parse_selector_flags(cfg.selectors)
    if cfg.prune is not None or cfg.quantize is not None:
        raise UsageError("--selector does not combine with --prune or --quantize; use the "
                         "Python API (dycomp.compile(..., selectors=..., passes=...))")
    if cfg.explain_opts:
        raise UsageError("--explain-opts shows one model's optimizations; drop it with "
                         "--selector")


def _calibration(path: Path, examples: tuple, flag: str = "--calib") -> list[tuple]:
    """Input tuples from an .npz: one array per input, in order, each with a leading
    sample axis (N, *input shape)."""
    import torch

    with np.load(path) as data:
        arrays = [data[k] for k in data.files]
    if len(arrays) != len(examples):
        raise UsageError(f"{flag} {str(path)!r} holds {len(arrays)} arrays; the model takes "
                         f"{len(examples)} inputs (one array per input, samples first)")
    for a, x in zip(arrays, examples):
        if tuple(a.shape[1:]) != tuple(x.shape):
            raise UsageError(f"{flag} {str(path)!r}: an array of shape {a.shape} does not "
                             f"hold samples of shape {tuple(x.shape)}; expected "
                             f"(N, {', '.join(map(str, x.shape))})")
    return [tuple(torch.from_numpy(np.ascontiguousarray(a[i])).to(x.dtype)
                  for a, x in zip(arrays, examples)) for i in range(len(arrays[0]))]


@dataclass(frozen=True)
class RunConfig:
    """`dycomp run`: an artifact, its inputs and what to do with the outputs."""

    artifact: Path
    inputs: tuple[Path, ...]
    out: Path | None = None
    show_path: bool = False
    threads: int | None = None
    trust_native: bool = False
    public_key: Path | None = None
    selected: tuple[str, ...] = ()  # --arg NAME=VALUE: a sub-network of a model with selectors
    budget_ms: float | None = None  # --budget-ms: the sub-network `select` picks

    def __post_init__(self):
        if self.budget_ms is not None and (self.selected or not self.budget_ms > 0):
            raise UsageError("--budget-ms needs a positive number of milliseconds and no "
                             f"--arg (got {self.budget_ms:g}{' and --arg' * bool(self.selected)})")
        if any("=" not in a for a in self.selected):
            raise UsageError(f"--arg takes NAME=VALUE, got {[a for a in self.selected]}")
        if not self.inputs:
            raise UsageError("give the inputs with --input x.npy (one per input) or "
                             "--input inputs.npz")
        for p in self.inputs:
            if p.suffix not in (".npy", ".npz"):
                raise UsageError(f"--input {str(p)!r} must be a .npy or .npz file")
            if not p.is_file():
                raise UsageError(f"input file {str(p)!r} does not exist")
        if any(p.suffix == ".npz" for p in self.inputs) and len(self.inputs) > 1:
            raise UsageError("give either one .npz file or one .npy file per input, not both")
        if self.out is not None and self.out.suffix != ".npz":
            raise UsageError(f"--out {str(self.out)!r} must end in .npz")
        _check_threads(self.threads)


@dataclass(frozen=True)
class InspectConfig:
    """`dycomp inspect`: the artifact to show, and the key to check its signature with."""

    artifact: Path
    public_key: Path | None = None


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")


# -- argument parsing ------------------------------------------------------------------------
def _round_to(text: str) -> int | str:
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a channel count >= 1 or 'auto', got {text!r}")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: ... (see 'dycomp compile --help')`."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


_FORMATTER = argparse.RawDescriptionHelpFormatter

_MAIN_HELP = """\
dycomp compiles PyTorch dynamic networks (early exits, gated blocks, routing,
data-dependent loops) as written: it splits the program at data-dependent control
flow into static subgraphs, compiles each with ONNX Runtime (or TVM), and writes an
artifact whose small host program replays the control flow. The artifact runs with
numpy and onnxruntime (or TVM's runtime) only, without PyTorch or the model's source.
"""

_MAIN_EPILOG = """\
examples:
  dycomp compile examples/zoo/multi_exit.py:make -o multi_exit.dyc
  dycomp run multi_exit.dyc --input x.npy --show-path
  dycomp inspect multi_exit.dyc

Set DYCOMP_DEBUG=1 (or 2, more verbose) for tracebacks and debug logging.
"""

_COMPILE_HELP = """\
Compile a model into an artifact directory (manifest.json, subgraphs/*.onnx or, for
--backend tvm, subgraphs/regions.so, host.py).

TARGET names the model as path/to/model.py:factory or pkg.module:factory. The factory
is an nn.Module class constructible without arguments, or a function taking no
arguments that returns a module or (module, example_inputs). The model is put in
eval mode. Without example inputs from the factory, give their shapes with --input.
The compiled model is checked against eager PyTorch on the example inputs and on
generated inputs of the same shapes (--no-check skips that).
"""

_COMPILE_EPILOG = """\
examples:
  dycomp compile examples/zoo/multi_exit.py:make -o multi_exit.dyc
  dycomp compile examples/zoo/multi_exit.py:make --method early_exit -o early.dyc
  dycomp compile mypkg.models:ResNetExits --input 1x3x32x32 --checkpoint best.pt -o net.dyc
  dycomp compile model.py:Decoder --input 1x8:int64 --backend torch   (summary only)
  dycomp compile examples/zoo/static_resnet.py:make --backend tvm --tune-trials 64 -o r.dyc
  dycomp compile examples/zoo/static_resnet.py:make --prune 0.5 --quantize int8 \
      --calib calib.npz -o small.dyc
  dycomp compile slim.py:make --selector width=0.25,0.5,1.0 -o slim.dyc
      (then: dycomp run slim.dyc --input x.npy --arg width=0.5)
"""

_RUN_HELP = """\
Run an artifact on inputs stored as .npy files (one per tensor input, in order) or
one .npz file (arrays named like the inputs, or arr_0, arr_1, ... in order).
Prints every output (dtype, shape, a preview) or saves them with --out; nested
outputs are flattened into keys out_0, out_1_0, ... Needs numpy and onnxruntime (and
TVM's runtime for a tvm artifact) only. A tvm artifact holds native code and runs only
with --trust-native or a signature verified with --public-key.
"""

_RUN_EPILOG = """\
examples:
  dycomp run multi_exit.dyc --input x.npy --show-path
  dycomp run seq2seq.dyc --input src.npy --input mask.npy --out y.npz
  dycomp run multi_exit.dyc --input batch.npz --threads 1
  dycomp run resnet_tvm.dyc --input x.npy --trust-native
  dycomp run net.dyc --input x.npy --public-key release.key.pub
  dycomp run slim.dyc --input x.npy --budget-ms 2.5   (selectors: largest that fits)
"""

_INSPECT_HELP = """\
Show an artifact: entry point and statistics, whether it is signed (checked with
--public-key) and holds native code, the host program (the control flow with the
source lines it came from), the control-flow graph's nodes, and a table of the
subgraphs (ops, parameters, typed inputs/outputs, source lines). Loads nothing it
shows: needs numpy only.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dycomp", description=_MAIN_HELP, epilog=_MAIN_EPILOG,
                     formatter_class=_FORMATTER)
    parser.add_argument("--version", action="version", version=f"dycomp {dycomp.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    _add_compile(sub)
    _add_run(sub)
    _add_inspect(sub)
    from dycomp.benchmark.cli import add_bench

    add_bench(sub, _FORMATTER)
    from dycomp.cli_trust import add_trust_commands

    add_trust_commands(sub, _FORMATTER)
    from dycomp.serve.cli import add_serve

    add_serve(sub, _FORMATTER)
    return parser


def _add_compile(sub) -> None:
    p = sub.add_parser("compile", help="compile a model into a deployable artifact",
                       description=_COMPILE_HELP, epilog=_COMPILE_EPILOG,
                       formatter_class=_FORMATTER)
    p.add_argument("target", metavar="TARGET",
                   help="path/to/model.py:factory or pkg.module:factory")
    p.add_argument("-o", "--output", metavar="PATH", type=Path,
                   help="artifact directory to write (replaces an artifact there); "
                        "without -o, only compile, check and print the summary")
    p.add_argument("--method", default="forward",
                   help="method of the model to compile (default: forward)")
    p.add_argument("--input", action="append", default=[], metavar="SHAPE[:DTYPE]",
                   help="shape of one example input, e.g. 1x3x32x32 or 1x8:int64; repeat "
                        "per input, in order. Floats are seeded randn, ints in [0, 10). "
                        f"dtypes: {', '.join(DTYPES)} (default float32). Overrides the "
                        "factory's examples")
    p.add_argument("--dynamic", action="append", default=[], metavar="INPUT:DIM=NAME",
                   help="a dimension of an input whose size varies between calls, e.g. "
                        "x:0=batch (the same NAME on several inputs: the same size); the "
                        "artifact takes any size there and checks calls; repeatable")
    p.add_argument("--batch-variants", action="store_true",
                   help="also save per-row copies of row-wise regions, so that `dycomp serve` "
                        "runs a group of batched requests in one call (a larger artifact; "
                        "decisions fused into ONNX If/Loop still take one request at a time: "
                        "see --no-fuse-branches)")
    p.add_argument("--no-fuse-branches", dest="fuse_branches", action="store_false",
                   help="backend onnx: keep branches and loops in the host program instead of "
                        "ONNX If/Loop nodes (each decision then splits a batch of requests)")
    p.add_argument("--checkpoint", metavar="FILE", type=Path,
                   help="state_dict to load (torch.save file, read with weights_only=True; a "
                        "dict holding it under 'state_dict' or 'model' works too)")
    p.add_argument("--backend", choices=BACKENDS, default="onnx",
                   help="onnx (default; deployable), tvm (deployable; tune it with "
                        "--tune-trials) or torch (in-process only, not saveable)")
    p.add_argument("--tune-trials", type=int, metavar="N",
                   help="tvm: tune with MetaSchedule, N measured candidates per task; tasks "
                        "already in the tuning database are reused (0: only reuse). Without "
                        "it, TVM's code is untuned and slow")
    p.add_argument("--tune-db", type=Path, metavar="DIR",
                   help="tvm: tuning database directory (default: "
                        "$XDG_CACHE_HOME/dycomp/tvm-tuning, else ~/.cache/...)")
    p.add_argument("--tune-rpc", metavar="HOST:PORT:KEY",
                   help="tvm: measure tuning candidates on the TVM RPC servers registered "
                        "under KEY with the tracker at HOST:PORT (python -m "
                        "tvm.exec.rpc_tracker / rpc_server); built here, same database")
    p.add_argument("--strict", action="store_true",
                   help="tvm: fail, listing every region and op TVM cannot compile, instead "
                        "of running those regions on ONNX Runtime")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op threads per compiled subgraph while checking (onnx "
                        "backend; default 2). `dycomp run --threads` sets them at run time")
    p.add_argument("--prune", type=float, metavar="FRACTION",
                   help="structured pruning: remove this fraction of the channels of every "
                        "prunable layer, consistently over all paths (e.g. 0.5)")
    p.add_argument("--prune-allocation", choices=("uniform", "layer_adaptive"),
                   default="uniform",
                   help="per-layer amounts: uniform, or layer_adaptive (least output "
                        "distortion for the same number of removed parameters)")
    p.add_argument("--prune-round-to", type=_round_to, default=1, metavar="N|auto",
                   help="pruned layers keep a multiple of N channels; auto: the CPU's SIMD "
                        "block (16 with AVX-512, 8 with AVX2), below which ONNX Runtime's "
                        "convolutions get no faster")
    p.add_argument("--quantize", choices=("int8", "fp16"),
                   help="onnx: quantize the subgraphs (int8: dynamic, or static with --calib)")
    p.add_argument("--calib", type=Path, metavar="FILE.npz",
                   help="int8 calibration inputs: one array per input, samples first")
    p.add_argument("--no-opt", action="append", default=[], metavar="NAME",
                   help="turn off a dynamic-aware optimization (gate-to-branch, "
                        "hoist-loop-invariants, fuse-across-decisions, or all); repeatable")
    p.add_argument("--explain-opts", action="store_true",
                   help="list every optimization applied: pass, source line, what it did "
                        "and the estimated saving")
    p.add_argument("--selector", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="compile one sub-network per value of the keyword argument NAME "
                        "(values as JSON or Python literals: 0.5, 2, true, 'a'; other text "
                        "is a string), saved as one artifact with the weights stored once; "
                        "repeat per argument (one sub-network per combination). Run one with "
                        "`dycomp run --arg NAME=VALUE`. Setter selectors need the Python API")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the differential check against eager PyTorch (with --prune or "
                        "--quantize: the agreement report)")
    p.set_defaults(command_fn=compile_command, make_config=_compile_config)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run an artifact on .npy/.npz inputs (no PyTorch needed)",
                       description=_RUN_HELP, epilog=_RUN_EPILOG, formatter_class=_FORMATTER)
    p.add_argument("artifact", metavar="PATH", type=Path, help="artifact directory")
    p.add_argument("--input", action="append", default=[], type=Path, metavar="FILE",
                   help="a .npy file per tensor input (repeat, in order), or one .npz file")
    p.add_argument("--out", type=Path, metavar="FILE.npz",
                   help="save the outputs to this .npz file instead of printing them")
    p.add_argument("--show-path", action="store_true",
                   help="print the subgraphs executed, in order (the path taken)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="onnxruntime threads per subgraph (default: 2)")
    p.add_argument("--trust-native", action="store_true",
                   help="allow native code (a TVM artifact's regions.so, which runs with "
                        "your privileges when loaded); without it, or --public-key, a TVM "
                        "artifact is refused")
    p.add_argument("--public-key", type=Path, metavar="KEY.pub",
                   help="require a valid signature.json by this Ed25519 public key (PEM), "
                        "made with `dycomp sign`; a verified signature also allows native code")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a model compiled with selectors: the sub-network to run (an "
                        "argument's value, or a setter call by its index), once per selector")
    p.add_argument("--budget-ms", type=float, metavar="MS",
                   help="a model compiled with selectors: run the largest sub-network whose "
                        "stored median latency fits MS (measured with `dycomp bench "
                        "--save-latency`); prints which one ran")
    p.set_defaults(command_fn=run_command, make_config=_run_config)


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show an artifact's control flow and subgraphs",
                       description=_INSPECT_HELP, formatter_class=_FORMATTER,
                       epilog="example:\n  dycomp inspect multi_exit.dyc\n")
    p.add_argument("artifact", metavar="PATH", type=Path, help="artifact directory")
    p.add_argument("--public-key", type=Path, metavar="KEY.pub",
                   help="check signature.json against this Ed25519 public key (PEM); exit "
                        "non-zero if it is missing or does not match")
    p.set_defaults(command_fn=inspect_command, make_config=_inspect_config)


def _check_tune_rpc(address: str, trials: int | None) -> None:
    """--tune-rpc: HOST:PORT:KEY, and a trial budget to measure (it only affects tuning)."""
    from dycomp.backends.tvm_rpc import RpcAddress

    try:
        RpcAddress.parse(address)
    except ValueError as e:
        raise UsageError(str(e).replace("TuneConfig.rpc / ", "")) from None
    if trials is None:
        raise UsageError("--tune-rpc needs --tune-trials N (it measures tuning candidates)")


def _compile_config(ns) -> CompileConfig:
    return CompileConfig(target=Target.parse(ns.target), output=ns.output, method=ns.method,
                         inputs=tuple(InputShape.parse(s) for s in ns.input),
                         checkpoint=ns.checkpoint, backend=ns.backend, threads=ns.threads,
                         check=ns.check, tune_trials=ns.tune_trials, tune_db=ns.tune_db,
                         tune_rpc=ns.tune_rpc,
                         strict=ns.strict, prune=ns.prune,
                         prune_allocation=ns.prune_allocation,
                         prune_round_to=ns.prune_round_to, quantize=ns.quantize,
                         calib=ns.calib, no_opt=tuple(ns.no_opt),
                         explain_opts=ns.explain_opts, selectors=tuple(ns.selector),
                         dynamic=tuple(ns.dynamic), batch_variants=ns.batch_variants,
                         fuse_branches=ns.fuse_branches)


def _run_config(ns) -> RunConfig:
    return RunConfig(artifact=ns.artifact, inputs=tuple(ns.input), out=ns.out,
                     show_path=ns.show_path, threads=ns.threads,
                     trust_native=ns.trust_native, public_key=ns.public_key,
                     selected=tuple(ns.arg), budget_ms=ns.budget_ms)


def _inspect_config(ns) -> InspectConfig:
    return InspectConfig(artifact=ns.artifact, public_key=ns.public_key)


# -- entry point ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the dycomp command line; returns the exit status."""
    configure_logging()
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help()
            return 2
        ns.command_fn(ns.make_config(ns), _console())
        return 0
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    except USAGE_ERRORS as e:
        return _fail(e, 2)
    except (DycompError, OSError) as e:
        return _fail(e, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as e:  # a bug in dycomp or in the model's own code
        return _fail(f"{type(e).__name__}: {e} (set DYCOMP_DEBUG=1 for the traceback)", 1)


def _console() -> Console:
    """Rich output on stdout; 120 columns when piped (rich's default is 80), so that tables
    written to a file or a CI log keep one row per line."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120
    return console


def _fail(error, code: int) -> int:
    if debug_level() and isinstance(error, BaseException):
        traceback.print_exc()
    sys.stderr.write(f"error: {one_line(str(error))}\n")
    return code


def one_line(text: str) -> str:
    """A multi-line message as one line: items joined by '; ', continuations by a space."""
    out = ""
    for part in (p.strip() for p in text.splitlines()):
        if part:
            glue = "" if not out or part[0] in ".,;)" else " " if out.endswith(":") else "; "
            out += glue + part
    return out


# -- compile -------------------------------------------------------------------------------
class Stages:
    """Progress per stage: a spinner while it runs, then a line with its time. On stdout,
    so that stderr holds nothing but the error line when something fails."""

    def __init__(self, console: Console):
        self.console, self.seconds = console, {}

    @contextmanager
    def __call__(self, title: str, spinner: bool = True) -> Iterator[None]:
        start = time.perf_counter()
        try:
            if not spinner:
                self.console.print(f"  {escape(title)} ...")
            with self.console.status(f"{escape(title)} ...") if spinner else nullcontext():
                yield
        except BaseException:
            self.console.print(f"[red]✗[/] {escape(title)}")
            raise
        self.seconds[title] = time.perf_counter() - start
        self.console.print(f"[green]✓[/] {escape(title)} [dim]({self.seconds[title]:.2f} s)[/]")


def compile_command(cfg: CompileConfig, out: Console) -> None:
    """load target -> capture/compile -> check -> save, then a summary table."""
    from dycomp import target as tg  # imports torch, which run/inspect must not

    stage = Stages(out)
    with stage(f"load {cfg.target}"):
        loaded = tg.load_target(cfg.target)
        if cfg.checkpoint is not None:
            tg.load_checkpoint(loaded.model, cfg.checkpoint)
        fn = _method(loaded.model, cfg.method)
        examples = _examples(cfg, loaded)
    if cfg.selectors:  # many sub-networks, one artifact
        from dycomp.cli_compile_selectors import compile_selected

        return compile_selected(cfg, loaded.model, examples, stage, out)
    compiling = f"capture + compile ({cfg.backend})"
    options = {}
    if cfg.backend == "tvm":
        options["strict"] = cfg.strict
        if cfg.tune_trials is not None:
            options["tune"] = dycomp.TuneConfig(trials=cfg.tune_trials, db=cfg.tune_db,
                                                rpc=cfg.tune_rpc)
    passes = cfg.passes(examples)
    with stage(compiling, spinner="tune" not in options):  # tuning shows its own bar
        cm = dycomp.compile(loaded.model, examples, method=cfg.method, backend=cfg.backend,
                            check=False, threads=cfg.threads, passes=passes,
                            optimize=cfg.optimize, dynamic_dims=parse_cli(list(cfg.dynamic)),
                            batch_variants=cfg.batch_variants,
                            fuse_branches=cfg.fuse_branches, **options)
    checked = None
    if cfg.check and passes:
        from dycomp.check import variants

        with stage("compare with eager PyTorch"):
            inputs = [a for a, _ in variants(examples, {}, n=31)]
            checked = dycomp.compare(fn, cm, inputs)
    elif cfg.check:
        from dycomp.check_paths import path_check

        with stage("check against eager PyTorch, every decision arm forced"):
            checked = cm.check = path_check(fn, cm, examples, {}, more=14)
        if cm.spec.dynamic:
            from dycomp.check_dyndims import check_sizes

            with stage("check other sizes of the dynamic dims"):
                check_sizes(fn, cm, examples, {})
    if cfg.output is not None:
        with stage(f"save {cfg.output}"):
            cm.save(cfg.output)
    times = (stage.seconds[compiling], sum(stage.seconds.values()))
    out.print(_compile_summary(cfg, cm, examples, checked, times))
    if cfg.explain_opts:
        out.print(_applied_table(cm.graph.applied))


def _fused_nodes(graph, op: str) -> int:
    """ONNX `If` / `Loop` nodes in the lowered subgraphs (branches and loops fused out of
    the host), nested ones included."""
    from dycomp.backends.onnx_backend import all_nodes

    return sum(n.op_type == op for r in graph.regions.values() if r.onnx is not None
               for n in all_nodes(r.onnx.graph))


def _fired(applied: list) -> str:
    """`gate-to-branch x18 at gated_mul.py:64, gated_mul.py:70, ...` per pass."""
    lines: dict = {}
    for a in applied:
        lines.setdefault(a.pass_name, []).append(a.line)
    parts = []
    for name, where in lines.items():
        unique = list(dict.fromkeys(where))
        more = " ..." if len(unique) > 3 else ""
        parts.append(f"{name} x{len(where)} at {', '.join(unique[:3])}{more}")
    return "; ".join(parts)


def _applied_table(applied: list):
    """One row per optimization the dynamic-aware passes applied."""
    if not applied:
        return Text("no dynamic-aware optimization applied")
    table = Table(title="optimizations applied")
    for col in ("pass", "source", "what", "estimated saving"):
        table.add_column(col)
    for a in applied:
        _row(table, a.pass_name, a.line, a.what, a.saving)
    return table


def _method(model, name: str):
    fn = getattr(model, name, None)
    if not callable(fn):
        methods = sorted(n for n, v in vars(type(model)).items()
                         if callable(v) and not n.startswith("_"))
        raise TargetError(f"{type(model).__name__} has no method {name!r}"
                          f"{'; it defines ' + ', '.join(methods) if methods else ''}")
    return fn


def _examples(cfg: CompileConfig, loaded) -> tuple:
    from dycomp.target import make_inputs

    if cfg.inputs:
        if loaded.example_inputs is not None:
            log.info("--input given: ignoring the example inputs the factory returned")
        return make_inputs([(s.shape, s.dtype) for s in cfg.inputs])
    if loaded.example_inputs is None:
        raise UsageError(f"{cfg.target} gives no example inputs; give their shapes with "
                         f"--input, e.g. --input 1x3x32x32")
    return loaded.example_inputs


def summary_head(cfg: CompileConfig, examples: tuple) -> Table:
    """The compile summary's table with its first rows: target and example inputs."""
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    _row(table, "target", f"{cfg.target} ({cfg.method})")
    _row(table, "inputs", _describe_inputs(examples) + (
        " (from --input)" if cfg.inputs else " (from the factory)"))
    return table


def _compile_summary(cfg: CompileConfig, cm, examples: tuple, checked: int | None,
                     times: tuple[float, float]) -> Table:
    s = cm.graph.stats()
    table = summary_head(cfg, examples)
    if cm.spec.dynamic:
        _row(table, "signature", f"{cm.signature} (dynamic dims by name)")
    _row(table, "backend", cfg.backend)
    report = getattr(cm.executor, "report", None)
    if report is not None:
        _row(table, "tvm", report.summary())
    calls = s["region_calls"]
    _row(table, "subgraphs", f"{s['regions']} ({calls} call site{'s' * (calls != 1)})")
    view = cm.control_view()
    for key, op in (("branches", "If"), ("loops", "Loop")):
        fused = _fused_nodes(cm.graph, op)
        _row(table, key, view.count(key) + (f"; {fused} ONNX {op} nodes in the subgraphs"
                                            if fused else ""))
    for key in ("returns", "ops"):
        _row(table, key, str(s[key]))
    applied = [str(a) for a in cm.graph.applied]
    for note in cm.optimizations:
        if note not in applied:
            _row(table, "optimized", note)
    if applied:
        _row(table, "dynamic opts", _fired(cm.graph.applied)
             + ("" if cfg.explain_opts else " (--explain-opts: what and how much)"))
    _row(table, "check", "skipped" if checked is None else
         f"matched eager on {checked} inputs" if isinstance(checked, int) else
         f"matched eager on {checked.inputs} inputs; {checked.summary()}"
         if hasattr(checked, "arms") else
         f"vs eager on {checked.n} inputs: same path {checked.path_agreement:.0%}"
         f"{' (host decisions)' if checked.fused else ''}, argmax agreement "
         f"{checked.output_agreement:.0%}, max |diff| {checked.output_max_abs_diff:.3g}")
    _row(table, "compile time", f"{times[0]:.2f} s (all stages {times[1]:.2f} s)")
    artifact = "not saved (no -o)" if cfg.output is None else (
        f"{cfg.output} ({_human_size(_disk_size(cfg.output))})")
    _row(table, "artifact", artifact)
    return table


def _row(table: Table, *cells: str) -> None:
    """A table row of plain text: artifact and model data is never read as rich markup."""
    table.add_row(*(Text(c) for c in cells))


def _describe_inputs(examples: tuple) -> str:
    def one(x):
        if hasattr(x, "dtype") and hasattr(x, "shape"):
            return _type(str(x.dtype).replace("torch.", ""), tuple(x.shape))
        return repr(x)

    return ", ".join(one(x) for x in examples)


def _disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# -- run -----------------------------------------------------------------------------------
def run_command(cfg: RunConfig, out: Console) -> None:
    """Load the artifact, run it on the input files, print or save the outputs."""
    from dycomp import runtime
    from dycomp.runtime.artifact import check_inputs

    art = runtime.load(cfg.artifact, **({} if cfg.threads is None else {"threads": cfg.threads}),
                       trust_native=cfg.trust_native, public_key=cfg.public_key)
    if cfg.budget_ms is not None:
        from dycomp.cli_selectors import budget_subnet

        art = budget_subnet(art, cfg.budget_ms, out)
    else:
        art = _selected_subnet(art, cfg.selected)
    arrays = _read_inputs(cfg.inputs, art.signature)
    try:
        arrays = check_inputs(art.signature, tuple(arrays))
    except ValueError as e:
        raise UsageError(f"{_input_names(cfg.inputs)}: {e}") from None
    from dycomp.runtime.controlflow import manifest_view

    result, path = art.run(*arrays, return_path=True)
    leaves = dict(flatten_outputs(result))
    if cfg.out is not None:
        saved = save_outputs(cfg.out, leaves)
        none = [k for k in leaves if k not in saved]
        out.print(f"saved {len(saved)} output(s) to {cfg.out}: {', '.join(saved)}"
                  + (f" (None, not saved: {', '.join(none)})" if none else ""), **_PLAIN)
    else:
        out.print(_outputs_table(leaves))
    if cfg.show_path:
        n = len(path)  # fused subgraphs list the regions they ran inside
        out.print(f"path: {' -> '.join(path)} ({n} region{'s' * (n != 1)})", **_PLAIN)
        out.print(f"decisions: {manifest_view(art.manifest).label(path)}", **_PLAIN)


def _selected_subnet(art, selected: tuple[str, ...]):
    """The sub-network `--arg NAME=VALUE` names in a model with selectors, else `art`."""
    from dycomp.runtime.selectors import Selected

    if not isinstance(art, Selected):
        if selected:
            raise UsageError("--arg chooses a sub-network, but this artifact was compiled "
                             "without selectors")
        return art
    try:
        return art.subnets[art.choose(dict(a.split("=", 1) for a in selected))]
    except ValueError as e:
        raise UsageError(f"{e} (give --arg NAME=VALUE)") from None


def _input_names(paths) -> str:
    return ", ".join(p.name for p in paths)


def _read_inputs(paths: tuple[Path, ...], signature) -> list[np.ndarray]:
    if paths[0].suffix == ".npz":
        return _read_npz(paths[0], [spec.name for spec in signature.inputs])
    return [_load_array(p) for p in paths]


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"cannot read {path} as a .npy array: {e}") from None


def _read_npz(path: Path, names: list[str]) -> list[np.ndarray]:
    """Arrays named like the artifact's inputs, or arr_0, arr_1, ... (np.savez's names)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"cannot read {path} as an .npz archive: {e}") from None
    for order in (names, [f"arr_{i}" for i in range(len(arrays))]):
        if set(arrays) == set(order):
            return [arrays[k] for k in order]
    raise UsageError(f"{path} holds arrays {', '.join(arrays) or '(none)'}; name them "
                     f"{', '.join(names)} (the artifact's inputs) or arr_0, arr_1, ... in order")


def save_outputs(path: Path, leaves: dict) -> list[str]:
    """Save the non-None leaves as arrays in an .npz; returns the keys saved."""
    arrays = {k: np.asarray(v) for k, v in leaves.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return list(arrays)


def _outputs_table(leaves: dict) -> Table:
    table = Table(title="outputs", title_justify="left")
    for col in ("name", "type", "value"):
        table.add_column(col)
    for key, v in leaves.items():
        if isinstance(v, (np.ndarray, np.generic)) or isinstance(v, list):
            arr = np.asarray(v)
            _row(table, key, _type(arr.dtype, arr.shape), preview(arr))
        else:
            _row(table, key, type(v).__name__, repr(v))
    return table


def preview(arr: np.ndarray, n: int = 6) -> str:
    """The first `n` values of `arr` (flattened), with a count of the rest."""
    flat = arr.reshape(-1)
    text = ", ".join(f"{v:.4g}" if arr.dtype.kind == "f" else str(v) for v in flat[:n].tolist())
    if arr.ndim == 0:
        return text
    return f"[{text}, ... ({flat.size} values)]" if flat.size > n else f"[{text}]"


# -- inspect -------------------------------------------------------------------------------
def inspect_command(cfg: InspectConfig, out: Console) -> None:
    """Header, host program, control-flow nodes and subgraph table of an artifact."""
    from dycomp.runtime import artifact as rt
    from dycomp.runtime import selectors, trust
    from dycomp.runtime.batching import batching_of
    from dycomp.runtime.batching import describe as describe_batching
    from dycomp.runtime.controlflow import manifest_view

    raw = rt.manifest_bytes(cfg.artifact)
    signed = trust.describe(cfg.artifact, raw, cfg.public_key)
    if selectors.is_selected(raw):  # many sub-networks: a table of them
        out.print(_selected_summary(cfg.artifact, raw))
        out.print(escape(f"  trust     {signed}"))
        return
    manifest = rt.read_manifest(cfg.artifact)
    files = rt.verify_files(cfg.artifact, manifest)
    out.print(_inspect_header(cfg.artifact, manifest, rt.signature_of(manifest)))
    native = trust.native_code(manifest)
    out.print(escape(f"  trust     {signed}; " + (
        "native code: " + ", ".join(native) + " (loads only with --trust-native or a "
        "verified signature)" if native else "no native code (ONNX only)")))
    out.print(Text("\n" + manifest_view(manifest).text()))
    out.print(Text("\n" + describe_batching(batching_of(manifest))))
    out.print("\n[bold]host program[/] (host.py)")
    out.print(Syntax(files[rt.HOST].decode("utf-8"), "python", line_numbers=True,
                     theme="ansi_dark"))
    graph = manifest.get("cfg") or manifest.get("graph")
    if graph:
        out.print(_cfg_table(graph))
    out.print(_subgraph_table(manifest["subgraphs"]))


def _selected_summary(path: Path, raw: bytes) -> str:
    """Selectors, sub-networks and the shared weight store of a model with selectors."""
    from dycomp.runtime.selectors import describe, verify_selected

    manifest, _ = verify_selected(path, raw)
    decl = [f"  {s['name']} ({s['kind']}): " + ", ".join(describe(s, v) for v in s["values"])
            for s in manifest["selectors"]]
    rows = []
    for e in manifest["subnets"]:
        ms = e.get("latency_ms")
        rows.append(f"  {e['dir']}: {e.get('label')}  {e.get('params', '?')} params"
                    + ("" if ms is None else f"  {ms:.3f} ms"))
    w = manifest.get("weights", {})
    return "\n".join([f"dycomp artifact {path}: {len(rows)} sub-networks chosen by selectors",
                      *decl, "sub-networks (each an artifact: dycomp inspect DIR/<folder>):",
                      *rows, f"shared weights: {w.get('tensors')} distinct tensors, "
                      f"{w.get('bytes')} bytes, for {w.get('references')} references "
                      f"({w.get('blocks')} blocks of a larger tensor)"])


def _inspect_header(path: Path, manifest: dict, signature) -> str:
    from dycomp.runtime.controlflow import manifest_view

    s = manifest.get("stats", {})
    versions = manifest.get("versions", {})
    runtime = f"onnxruntime {versions.get('onnxruntime', '?')}"
    if manifest["backend"] == "tvm":
        runtime += f", apache-tvm {versions.get('apache-tvm', '?')}"
    text = (f"dycomp artifact {path}\n"
            f"  entry     {manifest.get('method', '?')}{signature}  from "
            f"{manifest.get('source', '?')}\n"
            f"  backend   {manifest['backend']} (built with dycomp "
            f"{versions.get('dycomp', '?')}, {runtime})\n"
            f"  contents  {len(manifest['subgraphs'])} subgraphs, "
            f"{manifest_view(manifest).counts()}, "
            f"{s.get('returns', '?')} returns, {s.get('ops', '?')} ops")
    tvm = manifest.get("tvm")
    if isinstance(tvm, dict):
        tuning = (f"tuned ({tvm.get('tasks', '?')} tasks)" if tvm.get("tuned")
                  else "UNTUNED (TVM's default schedules)")
        text += (f"\n  tvm       {tuning}; {len(tvm.get('fallback') or {})} subgraph(s) "
                 "on ONNX Runtime")
    return escape(text)


def _cfg_table(data: dict) -> Table:
    """The control-flow graph's nodes in depth-first order, with their successors."""
    nodes = {n["id"]: n for n in data["nodes"]}
    succ: dict = {n: [] for n in nodes}
    uses: dict = {}
    for e in data.get("edges", data.get("links", [])):
        succ[e["source"]].append((e["target"], bool(e.get("back"))))
        uses[e["target"]] = e.get("values", [])
    order = _preorder("entry" if "entry" in nodes else next(iter(nodes)), succ)
    number = {n: i for i, n in enumerate(order)}
    table = Table(title="control-flow graph", title_justify="left")
    for col in ("#", "node", "defines", "line", "next"):
        table.add_column(col)
    for nid in order:
        node = nodes[nid]
        nxt = ", ".join(f"{'↺' if back else ''}{number[t]}" for t, back in succ[nid])
        _row(table, str(number[nid]), _node_text(node, uses.get(nid, [])),
                      ", ".join(node.get("defs", [])), node.get("line", ""), nxt or "end")
    return table


def _preorder(root, succ: dict) -> list:
    seen, order, stack = set(), [], [root]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        order.append(n)
        stack.extend(t for t, back in reversed(succ[n]) if not back)
    return order


def _node_text(node: dict, uses: list) -> str:
    kind, label = node.get("kind"), node.get("label", node["id"])
    args = ", ".join(uses)
    if kind == "CallRegion":
        return f"call {label}({args})"
    if kind == "Return":
        return f"return {args}"
    if kind == "entry":
        return "entry"
    return label


def _subgraph_table(subgraphs: dict) -> Table:
    table = Table(title="subgraphs", title_justify="left")
    for col, justify in (("name", "left"), ("runs on", "left"), ("ops", "right"),
                         ("params", "right"), ("inputs", "left"), ("outputs", "left"),
                         ("source lines", "left")):
        table.add_column(col, justify=justify)
    for name, sub in subgraphs.items():
        runs_on = sub.get("backend", "onnx")
        if isinstance(sub.get("ran"), list):  # a fused subgraph that reports its path
            runs_on += f"\n(fuses {len(sub['ran'])} regions)"
        _row(table, name, runs_on, str(sub.get("ops", "?")),
             f"{sub.get('params', 0):,}", _values(sub.get("inputs", []), names=True),
             _values(sub.get("outputs", []), names=False),
             compress_lines(sub.get("lines", [])))
    return table


def _values(values: list, names: bool) -> str:
    types = [_type(v.get("dtype") or "?", v.get("shape", [])) for v in values]
    return "\n".join(f"{v['name']}: {t}" if names else t for v, t in zip(values, types))


def _type(dtype, shape) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]"


def compress_lines(lines: list[str]) -> str:
    """["m.py:41", "m.py:42", "m.py:43", "m.py:81", "n.py:7"] -> "m.py:41-43, 81; n.py:7"."""
    by_file: dict[str, list[int]] = {}
    other = []
    for entry in lines:
        file, _, num = str(entry).rpartition(":")
        if file and num.isdigit():
            by_file.setdefault(file, []).append(int(num))
        else:
            other.append(str(entry))
    parts = [f"{f}:{_ranges(sorted(set(nums)))}" for f, nums in by_file.items()]
    return "; ".join(parts + other)


def _ranges(nums: list[int]) -> str:
    spans, start = [], None
    for i, n in enumerate(nums):
        start = n if start is None else start
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            spans.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(spans)


if __name__ == "__main__":
    sys.exit(main())
