"""PyTorch's fused transformer fast path, off while a region is exported.

In eval, `nn.TransformerEncoderLayer` and `nn.MultiheadAttention` call fused kernels
(`aten::_transformer_encoder_layer_fwd`, `aten::_native_multi_head_attention`) that the
ONNX exporter cannot translate. The same modules also have a plain path of exportable
ops that computes the same function (to float rounding: the differential check compares
at 1e-4), which `torch.backends.mha.set_fastpath_enabled(False)` selects.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def no_fastpath():
    """Run the block with the transformer fast path disabled, then restore the setting."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)
