"""PABEE (JetRunner/PABEE): ALBERT with patience-based early exit, random weights.

Side packages as for `pabee_bert` (the same folder):

    pip install --no-deps --target SRC/_site/transformers211 transformers==2.11.0 \
        tokenizers sacremoses

ALBERT-base sizes (`hidden_size=768, num_attention_heads=12, intermediate_size=3072`),
`albert.set_patience(2)`: one shared layer run up to 12 times, each run followed by its
own classifier; the forward `break`s once two consecutive classifiers agree with the
previous one. The path is the number of layers run.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.corpus.common import Case, on_path, repo_dir, seed_all, site_dir
from benchmarks.corpus.pabee_bert import SITE, input_ids, layers_counter

NAME = "pabee-albert"
REPO = "JetRunner/PABEE"
COMMIT = "6080b3ee425e905f70a0bc47d4ddffa497851bf3"
DIR = "PABEE"
N_INPUTS = 30


def build(src: Path) -> Case:
    root = repo_dir(src, DIR)
    with on_path(root, site_dir(src, SITE)):
        from pabee.modeling_albert import AlbertConfig, AlbertForSequenceClassification
        seed_all(0)
        config = AlbertConfig(num_labels=3, hidden_size=768, num_attention_heads=12,
                              intermediate_size=3072)
        m = AlbertForSequenceClassification(config).eval()
    m.albert.set_patience(2)
    return Case(fn=m, make_input=input_ids, path_of=layers_counter(m.albert),
                notes=["patience 2", "path: layers run (from albert.inference_layers_num)"])
