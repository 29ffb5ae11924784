"""DeeBERT (castorini/DeeBERT): BERT-base with a highway classifier after every layer; it
exits at the first layer whose highway entropy is below a threshold, by raising
`HighwayException(outputs, layer)` inside the encoder's layer loop, caught by
`BertForSequenceClassification.forward` (`transformers/modeling_highway_bert.py`).

The repository's own transformers 2.x copy is imported from `src/DeeBERT` (it needs six,
tqdm, requests, regex, sacremoses, sentencepiece and boto3 installed; they are imported
only). Random weights; the threshold `ENTROPY` makes exits at several layers occur on
random token ids.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from benchmarks.corpus.common import Case, on_path, repo_dir, seed_all

NAME = "deebert"
REPO = "castorini/DeeBERT"
COMMIT = "563eac1c"
DIR = "DeeBERT"
N_INPUTS = 30
ENTROPY = 0.67  # exit where the highway entropy (nats, 2 labels) is below this: layers 1-4, 12
SEQ = 128


def _import(src: Path):
    root = repo_dir(src, DIR)
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        del sys.modules[name]  # another transformers: the repository's own copy is wanted
    with on_path(root):
        cfg = importlib.import_module("transformers.configuration_bert")
        return importlib.import_module("transformers.modeling_highway_bert"), cfg.BertConfig


def build(src: Path) -> Case:
    hb, config = _import(src)
    seed_all(0)
    model = hb.BertForSequenceClassification(config(num_labels=2)).eval()
    model.bert.encoder.set_early_exit_entropy(ENTROPY)

    def make_input(i: int):
        g = torch.Generator().manual_seed(i)
        return (torch.randint(1000, 30000, (1, SEQ), generator=g),), {}

    return Case(fn=model, make_input=make_input, path_of=lambda out: out[-1],
                notes=[f"early_exit_entropy={ENTROPY}", "random weights (seed 0)",
                       f"input_ids randint(1000, 30000, (1, {SEQ}))"])
