"""A stitchable network (SN-Net's shape) as one artifact over its stitch ids (issue #26).

Two tiny token-mixing anchors of different widths; a sub-network runs the front anchor's
first blocks, a stitching Linear, then the end anchor's remaining blocks and head, or one
anchor alone. `reset_stitch_id(k)` picks it, the way `benchmarks/snnet.py` drives the real
SN-Net; every stitch id is compiled into one selector model and checked against eager.
"""

import numpy as np
import pytest
import torch
from torch import nn

import dycomp
from dycomp.runtime.shared_weights import WEIGHTS

DEPTH, TOKENS, PATCH = 3, 5, 6


class Block(nn.Module):
    """Pre-norm residual token MLP and channel MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.tokens = nn.Linear(TOKENS, TOKENS)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp(self.norm2(x))


class Anchor(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.embed_dim = dim
        self.patch_embed = nn.Linear(PATCH, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS, dim) * 0.1)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)

    def forward_patch_embed(self, x):
        return self.patch_embed(x) + self.pos_embed

    def forward_head(self, x):
        return self.head(self.norm(x).mean(1))

    def forward(self, x):
        x = self.forward_patch_embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.forward_head(x)


def stitch_configs() -> list[dict]:
    """Anchor alone, or front blocks [0, j] then end blocks [k, DEPTH) with k in {j, j+1},
    through stitching layer j; both directions (narrow to wide and wide to narrow)."""
    configs = [{"comb": (a,), "cfgs": [], "layers": []} for a in (0, 1)]
    for comb in ((0, 1), (1, 0)):
        for j in range(DEPTH - 1):
            for k in (j, j + 1):
                configs.append({"comb": comb, "cfgs": [(j, k)], "layers": [j]})
    return configs


class Stitched(nn.Module):
    """SN-Net's control structure: a stitch id chosen by a setter, dict and string-key
    look-ups, ModuleList slices and a nested ModuleList of stitching layers."""

    def __init__(self):
        super().__init__()
        self.anchors = nn.ModuleList([Anchor(32), Anchor(64)])
        self.stitch_layers = nn.ModuleList(
            nn.ModuleList(nn.Linear(self.anchors[f].embed_dim, self.anchors[e].embed_dim)
                          for _ in range(DEPTH - 1)) for f, e in ((0, 1), (1, 0)))
        self.stitching_map_id = {"0-1": 0, "1-0": 1}
        self.stitch_configs = dict(enumerate(stitch_configs()))
        self.stitch_config_id = 0

    def reset_stitch_id(self, stitch_config_id):
        self.stitch_config_id = stitch_config_id

    def forward(self, x):
        if self.training:  # the repository samples a stitch per training step
            cfg_id = int(np.random.randint(0, len(self.stitch_configs)))
        else:
            cfg_id = self.stitch_config_id
        cfg = self.stitch_configs[cfg_id]
        comb = cfg["comb"]
        if len(comb) == 1:
            return self.anchors[comb[0]](x)
        x = self.anchors[comb[0]].forward_patch_embed(x)
        front = 0
        for i, (end, start) in enumerate(cfg["cfgs"]):
            for blk in self.anchors[comb[i]].blocks[front:end + 1]:
                x = blk(x)
            front = start
            key = str(comb[i]) + "-" + str(comb[i + 1])
            x = self.stitch_layers[self.stitching_map_id[key]][cfg["layers"][i]](x)
        for blk in self.anchors[comb[-1]].blocks[front:]:
            x = blk(x)
        return self.anchors[comb[-1]].forward_head(x)


IDS = list(range(len(stitch_configs())))


def _inputs(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, TOKENS, PATCH, generator=g) * (0.5 + i % 3) for i in range(n)]


def _eager(net: Stitched, k: int, x: torch.Tensor) -> np.ndarray:
    before = net.stitch_config_id
    net.reset_stitch_id(k)
    try:
        with torch.no_grad():
            return net(x).numpy()
    finally:
        net.reset_stitch_id(before)


@pytest.fixture(scope="module")
def stitched():
    torch.manual_seed(0)
    net = Stitched().eval()
    net.reset_stitch_id(3)
    calls = [("reset_stitch_id", (k,), {}) for k in IDS]
    cm = dycomp.compile(net, (_inputs(1)[0],), backend="onnx", selectors={"stitch": calls})
    return net, cm


def test_every_stitch_id_matches_eager(stitched):
    net, cm = stitched
    assert net.stitch_config_id == 3  # each declared call undone after its capture
    assert len(cm.subnets) == len(IDS)
    for k in IDS:
        cm.reset_stitch_id(k)
        for x in _inputs(6, seed=1):
            np.testing.assert_allclose(cm(x).numpy(), _eager(net, k, x), rtol=1e-4, atol=1e-4)


def test_stitch_ids_compute_different_functions(stitched):
    net, _ = stitched
    x = _inputs(1, seed=2)[0]
    outs = [_eager(net, k, x) for k in IDS]
    closest = min(np.abs(a - b).max() for i, a in enumerate(outs) for b in outs[:i])
    assert closest > 1e-3  # so a sub-network run for the wrong id would fail the test above


def test_undeclared_stitch_id_is_refused(stitched):
    _, cm = stitched
    with pytest.raises(ValueError, match=r"reset_stitch_id\(99\) is not a declared call"):
        cm.reset_stitch_id(99)


def test_one_artifact_stores_the_anchors_once(stitched, tmp_path):
    net, cm = stitched
    one = _size(cm.save(tmp_path / "sn.dyc"))
    own = [_size(sub.save(tmp_path / f"sub{i}.dyc")) for i, sub in enumerate(cm.subnets.values())]
    weights = sum(p.numel() * 4 for p in net.parameters())
    assert (tmp_path / "sn.dyc" / WEIGHTS).stat().st_size <= weights  # each weight once
    assert one < 0.5 * sum(own)
    rt = dycomp.runtime.load(tmp_path / "sn.dyc")
    for k in IDS:
        rt.reset_stitch_id(k)
        for x in _inputs(2, seed=3):
            np.testing.assert_allclose(rt(x.numpy()), _eager(net, k, x), rtol=1e-4, atol=1e-4)


def _size(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
