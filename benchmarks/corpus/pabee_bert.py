"""PABEE (JetRunner/PABEE): BERT with patience-based early exit, random weights.

Side packages (its `pabee` code imports transformers 2.x), installed once beside the
repository:

    pip install --no-deps --target SRC/_site/transformers211 transformers==2.11.0 \
        tokenizers sacremoses

`build` puts `SRC/_site/transformers211` and the repository on `sys.path`, builds
`BertForSequenceClassification(BertConfig(num_labels=3))` with `bert.set_patience(2)`:
each layer's internal classifier votes, and the forward `break`s once two consecutive
layers agree with the previous one. The path is the number of layers run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.corpus.common import Case, on_path, repo_dir, seed_all, site_dir

NAME = "pabee-bert"
REPO = "JetRunner/PABEE"
COMMIT = "6080b3ee425e905f70a0bc47d4ddffa497851bf3"
DIR = "PABEE"
N_INPUTS = 30
SITE = "transformers211"


def input_ids(i: int) -> tuple[tuple, dict]:
    """The i-th input: 128 token ids at batch 1, deterministic in i."""
    g = torch.Generator().manual_seed(1000 + i)
    return (torch.randint(1000, 25000, (1, 128), generator=g),), {}


def layers_counter(inner):
    """A `path_of` that reads how many layers the last eager call ran: PABEE adds them to
    `inference_layers_num`, which a pre-hook (run by eager calls only) sets to 0."""
    def reset(module, args):
        module.inference_layers_num = 0

    inner.register_forward_pre_hook(reset)
    return lambda out: inner.inference_layers_num


def build(src: Path) -> Case:
    root = repo_dir(src, DIR)
    with on_path(root, site_dir(src, SITE)):
        from pabee.modeling_bert import BertConfig, BertForSequenceClassification
        seed_all(0)
        m = BertForSequenceClassification(BertConfig(num_labels=3)).eval()
    m.bert.set_patience(2)
    return Case(fn=m, make_input=input_ids, path_of=layers_counter(m.bert),
                notes=["patience 2", "path: layers run (from bert.inference_layers_num)"])
