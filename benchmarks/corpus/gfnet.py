"""GFNet (blackfeather-wang/GFNet-Pytorch): glance at a downsampled image, then focus on
patches the policy picks, exiting as soon as the classifier is confident.

The modules come from the repository unchanged: two `models.resnet.resnet50` (the glance
network on the 96x96 downsampled image, the focus network on 96x96 patches),
`network.ActorCritic` (the patch policy, a GRU over the glance/focus features) and
`network.Full_layer` (the GRU classifier). The entry, `GFNetDriver.forward`, is the loop
of the repository's `inference.py` (`generate_logits`: glance, then focus steps whose
crops come from `utils.get_patch`), with its exit rule
`if max_preds[k][i].item() >= T[k]` applied online instead of offline over saved logits.

Settings: patch 96, 5 steps, ResNet-50 configuration of `configs.py`; thresholds `T[k]`
at the 60th percentile of step k's confidence over 20 calibration inputs (printed in the
notes; the last step always exits). The focus loop is written as in `inference.py` (a
host loop: its steps carry state in `memory.hidden` and `fc.hidden`, set inside the called
modules). The policy acts as `inference.py` calls it
(`training=False`): the action is the policy's mean, so the path is deterministic; the
`dist.sample()` it draws on the way is unused. Shims: `torch._six`, `.cuda()`,
torchvision's pure-Python parts (installed with `pip install --no-deps --target SIDE
torchvision==0.28.0`; SIDE from `$DYCOMP_CORPUS_SIDE`, else `SRC/_site/torchvision028`,
the folder the ViT adapters use).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.corpus.common import (
    Case,
    on_path,
    repo_dir,
    seed_all,
    shim_cuda,
    shim_six,
    shim_torchvision,
)

NAME = "gfnet"
REPO = "blackfeather-wang/GFNet-Pytorch"
COMMIT = "8a6775c8267c644aceb104796aebe2baab0dd595"
DIR = "GFNet-Pytorch"
N_INPUTS = 30

PATCH = 96
STEPS = 5
PERCENTILE = 60
N_CALIB = 20


class GFNetDriver(nn.Module):
    """`inference.py`'s glance-and-focus loop over the repository's modules, with the
    exit rule applied online. Returns (logits of the exit step, exit step)."""

    def __init__(self, model_prime, model, fc, policy, memory_cls, get_prime, get_patch,
                 thresholds):
        super().__init__()
        self.model_prime, self.model, self.fc, self.policy = model_prime, model, fc, policy
        self.memory_cls, self.get_prime, self.get_patch = memory_cls, get_prime, get_patch
        self.thresholds = list(thresholds)

    def forward(self, x):
        memory = self.memory_cls()
        input_prime = self.get_prime(x, PATCH, "bicubic")
        output, state = self.model_prime(input_prime)
        output = self.fc(output, restart=True)
        if self._confidence(output) >= self.thresholds[0]:
            return output, 0
        for patch_step in range(1, STEPS):  # inference.py's focus loop
            if patch_step == 1:
                action = self.policy.act(state, memory, restart_batch=True)
            else:
                action = self.policy.act(state, memory)
            patches = self.get_patch(x, action, PATCH)
            output, state = self.model(patches)
            output = self.fc(output, restart=False)
            if patch_step == STEPS - 1 or self._confidence(output) >= self.thresholds[patch_step]:
                return output, patch_step
        return output, STEPS - 1

    @staticmethod
    def _confidence(output):
        max_preds, _ = F.softmax(output, 1).max(1)
        return max_preds[0].item()


def _confidences(driver: GFNetDriver, x: torch.Tensor) -> list[float]:
    """Each step's confidence on `x`, running all the steps (thresholds off)."""
    saved, driver.thresholds = driver.thresholds, [math.inf] * (STEPS - 1)
    confs = []
    original = driver._confidence

    def spy(output):
        confs.append(original(output))
        return confs[-1]

    driver._confidence = spy
    try:
        with torch.no_grad():
            driver(x)
    finally:
        del driver._confidence
        driver.thresholds = saved
    return confs


def make_input(i: int):
    g = torch.Generator().manual_seed(1000 + i)
    return (torch.randn(1, 3, 224, 224, generator=g),), {}


def build(src: Path) -> Case:
    root = repo_dir(src, DIR)
    shim_six()
    shim_cuda()
    side = str(shim_torchvision(src))
    if side not in sys.path:
        sys.path.append(side)  # torchvision's pure-Python parts, for the repo's imports
    with on_path(root):
        import models.resnet as resnet
        import network
        import utils
        from configs import model_configurations
    cfg = model_configurations["resnet50"]
    seed_all(0)
    state_dim = cfg["feature_map_channels"] * math.ceil(PATCH / 32) ** 2
    driver = GFNetDriver(
        resnet.resnet50(pretrained=False), resnet.resnet50(pretrained=False),
        network.Full_layer(cfg["feature_num"], cfg["fc_hidden_dim"], cfg["fc_rnn"]),
        network.ActorCritic(cfg["feature_map_channels"], state_dim, cfg["policy_hidden_dim"],
                            cfg["policy_conv"]),
        network.Memory, utils.get_prime, utils.get_patch, [math.inf] * (STEPS - 1)).eval()
    confs = np.array([_confidences(driver, make_input(10_000 + i)[0][0])
                      for i in range(N_CALIB)])
    thresholds = [float(np.percentile(confs[:, k], PERCENTILE)) for k in range(STEPS - 1)]
    driver.thresholds = thresholds
    return Case(
        fn=driver, make_input=make_input, path_of=lambda out: out[1],
        notes=[f"patch {PATCH}, {STEPS} steps, thresholds (60th percentile of each step's "
               f"confidence over {N_CALIB} inputs): "
               + ", ".join(f"{t:.6g}" for t in thresholds) + " (steps 0-3; step 4 always exits)",
               "policy action: its mean (inference.py's training=False); dist.sample() unused",
               "shims: torch._six, .cuda(), torchvision pure-Python parts"])
