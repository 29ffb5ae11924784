"""Weights shared by several ONNX models, stored once (numpy and onnx only, never torch).

The sub-networks of one supernet (`dycomp.selectors`) hold many tensors that are the same
weight, whole or sliced: a sub-network that uses `conv.weight[:8, :4]` holds that slice
as a constant (the exporter folds it). `strip_all` moves every large tensor of the models
(initializers and `Constant` values, in nested `If` / `Loop` bodies too) into one store,
largest first: bytes equal to a stored tensor refer to it (the ONNX external-data fields
`location`, `offset`, `length`); a tensor equal to a block of a larger stored tensor of
the same dtype and rank, each dimension starting at 0 or centred (`w[:8, :4]`, the
3x3 centre of a 7x7 kernel), refers to that tensor plus `dycomp_block` (the block's
start:stop per dimension) and `dycomp_shape` (the stored tensor's shape), a dycomp
extension. `tensor_array` reads a tensor back (ONNX Runtime gets it from there:
`dycomp.runtime.shared_sessions`); `inline` puts the bytes back into a model (a
sub-network saved on its own). A tensor
computed from a weight (Once-for-All's kernel transform) is stored as its own bytes.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from dycomp.runtime.errors import ArtifactError

WEIGHTS = "weights.bin"  # the store, at the root of the artifact
MIN_BYTES = 256  # smaller tensors (shapes, scalars) stay in their model
_ALIGN = 64


class WeightStore:
    """Distinct tensors in the order added, each at a 64-byte aligned offset."""

    def __init__(self):
        self._offsets: dict[str, tuple[int, int]] = {}  # sha256 -> (offset, length)
        self._bases: dict[tuple, list] = {}  # (dtype, rank) -> [(array, offset, length)]
        self._chunks: list[bytes] = []
        self._arrays: dict[int, np.ndarray] = {}  # offset -> stored bytes (uint8)
        self._size = 0
        self.references = 0  # tensors stripped, shared ones counted each time
        self.blocks = 0  # of which blocks of a larger stored tensor

    def add(self, arr: np.ndarray) -> dict:
        """The reference to `arr` in the store: bytes equal to it, a block of a larger
        stored tensor, or its own bytes, added (the array itself is kept, not a copy)."""
        self.references += 1
        arr = np.ascontiguousarray(arr)
        key = hashlib.sha256(arr.reshape(-1).view(np.uint8)).hexdigest()
        if key in self._offsets:
            offset, length = self._offsets[key]
            return {"offset": offset, "length": length}
        candidates = self._bases.setdefault((arr.dtype.str, arr.ndim), [])
        for base, offset, length in candidates:
            block = _block_of(base, arr)
            if block is not None:
                self.blocks += 1
                return {"offset": offset, "length": length, "dycomp_block": block,
                        "dycomp_shape": "x".join(map(str, base.shape))}
        offset = self._size + (-self._size % _ALIGN)
        self._chunks += [b"\0" * (offset - self._size), arr.reshape(-1).view(np.uint8)]
        self._size = offset + arr.nbytes
        self._offsets[key] = (offset, arr.nbytes)
        self._arrays[offset] = self._chunks[-1]
        candidates.append((arr, offset, arr.nbytes))
        return {"offset": offset, "length": arr.nbytes}

    @property
    def tensors(self) -> int:
        return len(self._offsets)

    @property
    def nbytes(self) -> int:
        """Bytes of distinct tensors (the store's size, padding included)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def stored(self) -> list[np.ndarray]:
        """The distinct tensors, in the order of their offsets."""
        bases = sorted((offset, arr) for group in self._bases.values()
                       for arr, offset, _ in group)
        return [arr for _, arr in bases]

    def buffer(self, offset: int, length: int):
        """The stored bytes at `offset` (a tensor added whole), without copying."""
        data = self._arrays.get(offset)
        if data is None or length != data.nbytes:
            raise ArtifactError(f"no tensor of {length} bytes at offset {offset} of the "
                                "in-memory weight store")
        return data

    def to_bytes(self) -> bytes:
        return b"".join(self._chunks)


def _block_of(base: np.ndarray, arr: np.ndarray) -> str | None:
    """`start:stop,...` if `arr` is the block of `base` starting at 0 or centred in every
    dimension, else None."""
    if base.size <= arr.size or any(b < a for b, a in zip(base.shape, arr.shape)):
        return None
    starts = [sorted({0, (b - a) // 2}) for b, a in zip(base.shape, arr.shape)]
    first = arr.flat[0] if arr.size else None
    for start in itertools.product(*starts):
        if first is not None and base[start] != first:
            continue
        index = tuple(slice(s, s + a) for s, a in zip(start, arr.shape))
        if np.array_equal(base[index], arr):
            return ",".join(f"{s}:{s + a}" for s, a in zip(start, arr.shape))
    return None


def tensors(graph: onnx.GraphProto):
    """Every TensorProto of `graph`: initializers and attribute tensors, subgraphs too."""
    yield from graph.initializer
    yield from nested_tensors(graph)


def nested_tensors(graph: onnx.GraphProto):
    """The tensors of `graph` other than its own initializers: `Constant` values and
    everything in subgraphs (`If` / `Loop` bodies)."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from tensors(attr.g)
            for g in attr.graphs:
                yield from tensors(g)


def strip_all(models: list[bytes], store: WeightStore, source=None) -> list[bytes]:
    """`models` with the data of every tensor of at least MIN_BYTES moved to `store`,
    largest tensors first (so that a slice finds the whole weight stored). Tensors that
    already refer to a store take their bytes from `source` (that store: a WeightStore,
    or the bytes of a weights.bin), each distinct reference read once."""
    parsed = [onnx.load_from_string(m) for m in models]
    large, refs = [], {}
    for m in parsed:
        for t in tensors(m.graph):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                if source is None:
                    raise ArtifactError(f"tensor {t.name!r} refers to external data; strip it "
                                        "with the store it refers to")
                large.append((t, _ref_key(t)))
                refs.setdefault(large[-1][1], t)
            elif len(t.raw_data) >= MIN_BYTES:
                large.append((t, None))
    arrays = {k: tensor_array(t, source, f"tensor {t.name!r}") for k, t in refs.items()}
    new_refs: dict = {}

    def size(item):
        t, k = item
        return arrays[k].nbytes if k is not None else len(t.raw_data)
    for t, k in sorted(large, key=lambda item: -size(item)):
        if k is None:
            ref = store.add(np.frombuffer(t.raw_data, tensor_dtype_to_np_dtype(t.data_type)
                                          ).reshape(tuple(t.dims)))
        elif k in new_refs:  # a reference already moved: count it, add nothing
            store.references += 1
            ref = new_refs[k]
        else:
            ref = new_refs[k] = store.add(arrays[k])
        _refer(t, ref)
    return [m.SerializeToString() for m in parsed]


def _ref_key(t: onnx.TensorProto) -> tuple:
    return (t.data_type, tuple(t.dims), tuple(sorted((e.key, e.value) for e in t.external_data)))


def _refer(t: onnx.TensorProto, ref: dict) -> None:
    """Point `t` at `ref` in the store (its own data cleared)."""
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in {"location": WEIGHTS, **ref}.items():
        t.external_data.add(key=key, value=str(value))


def parse(model: bytes, where: str) -> onnx.ModelProto:
    """`model` parsed; ArtifactError naming `where` if it is not ONNX."""
    try:
        return onnx.load_from_string(model)
    except Exception as e:
        raise ArtifactError(f"{where}: not an ONNX model ({e})") from None


def inline(model: bytes, weights, where: str) -> bytes:
    """`model` with every tensor that refers to the store holding its bytes again
    (`weights`: the bytes of weights.bin, a memory map of it, or a WeightStore)."""
    m = parse(model, where)
    for t in tensors(m.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _inline_one(t, weights, where)
    return m.SerializeToString()


def _inline_one(t: onnx.TensorProto, weights, where: str) -> None:
    t.raw_data = tensor_array(t, weights, where).tobytes()
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT


def check_refs(model: bytes, size: int, where: str) -> None:
    """Raise ArtifactError if a tensor of `model` refers outside a store of `size` bytes
    or elsewhere than the store (what `inline` checks, without reading the bytes)."""
    for t in tensors(parse(model, where).graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _span(t, size, where)


def _span(t: onnx.TensorProto, size: int, where: str) -> tuple[dict, int, int]:
    ref = {e.key: e.value for e in t.external_data}
    if ref.get("location") != WEIGHTS:
        raise ArtifactError(f"{where}: tensor {t.name!r} refers to {ref.get('location')!r};"
                            f" a dycomp artifact keeps external data in {WEIGHTS} only")
    try:
        offset, length = int(ref["offset"]), int(ref["length"])
    except (KeyError, ValueError):
        raise ArtifactError(f"{where}: tensor {t.name!r} has a malformed reference "
                            f"{ref}") from None
    if offset < 0 or length < 0 or offset + length > size:
        raise ArtifactError(f"{where}: tensor {t.name!r} lies outside {WEIGHTS} "
                            f"({offset}+{length} > {size} bytes)")
    return ref, offset, length


def tensor_array(t: onnx.TensorProto, weights, where: str) -> np.ndarray:
    """The array an external tensor refers to in `weights` (bytes, a memory map or a
    WeightStore): a read-only view of the stored bytes, or a contiguous copy of a block."""
    ref, offset, length = _span(t, len(weights), where)
    if isinstance(weights, WeightStore):
        stored = weights.buffer(offset, length)
    else:
        stored = memoryview(weights)[offset:offset + length]
    dtype = tensor_dtype_to_np_dtype(t.data_type)
    try:
        if "dycomp_block" not in ref:
            return np.frombuffer(stored, dtype).reshape(tuple(t.dims))
        shape = tuple(int(d) for d in ref["dycomp_shape"].split("x"))
        index = tuple(slice(*map(int, b.split(":"))) for b in ref["dycomp_block"].split(","))
        block = np.frombuffer(stored, dtype).reshape(shape)[index]
    except (KeyError, ValueError, TypeError) as e:
        raise ArtifactError(f"{where}: tensor {t.name!r} has a malformed reference {ref} "
                            f"({e})") from None
    if block.shape != tuple(t.dims):
        raise ArtifactError(f"{where}: tensor {t.name!r}: block {ref['dycomp_block']} has "
                            f"shape {list(block.shape)}, the tensor {list(t.dims)}")
    return np.ascontiguousarray(block)


def inline_files(manifest: dict, files: dict[str, bytes], weights, where) -> dict[str, bytes]:
    """An artifact's files with its ONNX subgraphs' weights put back from `weights`."""
    out = dict(files)
    for s in manifest["subgraphs"].values():
        if s.get("backend", "onnx") == "onnx":
            out[s["file"]] = inline(files[s["file"]], weights, f"{where}/{s['file']}")
    return out
