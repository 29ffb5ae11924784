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
extension. `inline` puts the bytes back before ONNX Runtime sees a model. A tensor
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
        self._size = 0
        self.references = 0  # tensors stripped, shared ones counted each time
        self.blocks = 0  # of which blocks of a larger stored tensor

    def add(self, arr: np.ndarray) -> dict:
        """The reference to `arr` in the store: bytes equal to it, a block of a larger
        stored tensor, or its own bytes, added."""
        self.references += 1
        data = arr.tobytes()
        key = hashlib.sha256(data).hexdigest()
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
        self._chunks.append(b"\0" * (offset - self._size) + data)
        self._size = offset + len(data)
        self._offsets[key] = (offset, len(data))
        candidates.append((arr, offset, len(data)))
        return {"offset": offset, "length": len(data)}

    @property
    def tensors(self) -> int:
        return len(self._offsets)

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
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from tensors(attr.g)
            for g in attr.graphs:
                yield from tensors(g)


def strip_all(models: list[bytes], store: WeightStore) -> list[bytes]:
    """`models` with the data of every tensor of at least MIN_BYTES moved to `store`,
    largest tensors first (so that a slice finds the whole weight stored)."""
    parsed = [onnx.load_from_string(m) for m in models]
    large = [t for m in parsed for t in tensors(m.graph) if len(t.raw_data) >= MIN_BYTES]
    for t in sorted(large, key=lambda t: -len(t.raw_data)):
        arr = np.frombuffer(t.raw_data, tensor_dtype_to_np_dtype(t.data_type)).reshape(
            tuple(t.dims))
        ref = store.add(arr)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in {"location": WEIGHTS, **ref}.items():
            t.external_data.add(key=key, value=str(value))
    return [m.SerializeToString() for m in parsed]


def inline(model: bytes, weights: bytes, where: str) -> bytes:
    """`model` with every tensor that refers to the store holding its bytes again."""
    try:
        m = onnx.load_from_string(model)
    except Exception as e:
        raise ArtifactError(f"{where}: not an ONNX model ({e})") from None
    for t in tensors(m.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ref = {e.key: e.value for e in t.external_data}
        if ref.get("location") != WEIGHTS:
            raise ArtifactError(f"{where}: tensor {t.name!r} refers to {ref.get('location')!r};"
                                f" a dycomp artifact keeps external data in {WEIGHTS} only")
        try:
            offset, length = int(ref["offset"]), int(ref["length"])
        except (KeyError, ValueError):
            raise ArtifactError(f"{where}: tensor {t.name!r} has a malformed reference "
                                f"{ref}") from None
        if offset < 0 or length < 0 or offset + length > len(weights):
            raise ArtifactError(f"{where}: tensor {t.name!r} lies outside {WEIGHTS} "
                                f"({offset}+{length} > {len(weights)} bytes)")
        t.raw_data = _data(weights[offset:offset + length], ref, t, where)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return m.SerializeToString()


def _data(stored: bytes, ref: dict, t: onnx.TensorProto, where: str) -> bytes:
    """The tensor's bytes: `stored` itself, or the block of it that `ref` names."""
    if "dycomp_block" not in ref:
        return stored
    try:
        shape = tuple(int(d) for d in ref["dycomp_shape"].split("x"))
        index = tuple(slice(*map(int, b.split(":"))) for b in ref["dycomp_block"].split(","))
        base = np.frombuffer(stored, tensor_dtype_to_np_dtype(t.data_type)).reshape(shape)
        block = base[index]
    except (KeyError, ValueError, TypeError) as e:
        raise ArtifactError(f"{where}: tensor {t.name!r} has a malformed block reference "
                            f"{ref} ({e})") from None
    if block.shape != tuple(t.dims):
        raise ArtifactError(f"{where}: tensor {t.name!r}: block {ref['dycomp_block']} has "
                            f"shape {list(block.shape)}, the tensor {list(t.dims)}")
    return np.ascontiguousarray(block).tobytes()
