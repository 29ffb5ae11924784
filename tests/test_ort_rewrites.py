"""ONNX Runtime rewrites dycomp turns off (`DISABLED_OPTIMIZERS`): the sessions dycomp
makes never run them, and the outputs stay those of the graph as exported."""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
from torch import nn

from dycomp.runtime.onnx_executor import new_session, session_options


class Residual(nn.Module):
    """x + Linear(x), then LayerNorm: what ONNX Runtime fuses into SkipLayerNormalization."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm = nn.Linear(32, 32), nn.LayerNorm(32)

    def forward(self, x):
        return self.norm(x + self.fc(x))


def _optimized_ops(model: bytes, tmp_path, disabled: bool) -> set:
    import onnxruntime as ort

    so = session_options(2)
    so.optimized_model_filepath = str(tmp_path / f"opt{disabled}.onnx")
    if disabled:
        new_session(model, 2, so)
    else:
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}


def test_skip_layer_norm_fusion_is_off_and_outputs_match(tmp_path):
    torch.manual_seed(0)
    m, x = Residual().eval(), torch.randn(1, 16, 32)
    buf = io.BytesIO()
    torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=17, input_names=["x"])
    model = buf.getvalue()
    assert "SkipLayerNormalization" in _optimized_ops(model, tmp_path, disabled=False)
    assert "SkipLayerNormalization" not in _optimized_ops(model, tmp_path, disabled=True)
    (y,) = new_session(model, 2).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(y, m(x).detach().numpy(), rtol=1e-5, atol=1e-5)
