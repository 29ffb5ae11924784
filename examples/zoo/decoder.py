"""Greedy GRU encoder-decoder (seq2seq inference loop).

A GRU encodes a 1x6x16 source sequence; a GRUCell decoder then emits tokens
greedily. Two entry points:

* ``forward``: ``for t in range(self.max_len)`` with ``break`` when
  ``tok.item() == self.eos``; returns a variable-length Python list of ints plus
  the final hidden state.
* ``generate``: a ``while`` loop whose condition reads a tensor
  (``seq[0, -1] != self.eos``); the loop-carried ``seq`` grows by one column per
  step via ``torch.cat`` and every step attends (mean-pools) over the whole
  prefix, so the loop body sees a different sequence length each iteration.

Both apply a length penalty written as an in-place update of the logits
(``logits[:, self.eos] += self.eos_ramp * t``). Random weights; the EOS bias and
ramp are set in ``make()`` (from a fixed calibration batch) so that random inputs
stop at every length from 0 to ``max_len``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__:
    from . import common
else:  # run as a script, or loaded by path: common.py is a sibling
    import common


class GreedyDecoder(nn.Module):
    def __init__(self, in_dim=16, hidden=32, vocab=12, emb=16, max_len=8, bos=0, eos=1):
        super().__init__()
        self.encoder = nn.GRU(in_dim, hidden, batch_first=True)
        self.embed = nn.Embedding(vocab, emb)
        self.cell = nn.GRUCell(emb + hidden, hidden)
        self.out = nn.Linear(2 * hidden, vocab)
        self.max_len = max_len
        self.bos = bos
        self.eos = eos
        self.eos_ramp = 0.0  # length penalty: EOS logit bonus per generated token

    def encode(self, src):
        _, h = self.encoder(src)
        return h[0]

    def forward(self, src):
        ctx = self.encode(src)
        h = ctx
        tok = torch.full((1,), self.bos, dtype=torch.long)
        tokens = []
        for t in range(self.max_len):
            h = self.cell(torch.cat([self.embed(tok), ctx], -1), h)
            logits = self.out(torch.cat([h, ctx], -1))
            logits[:, self.eos] += self.eos_ramp * t
            tok = logits.argmax(-1)
            if tok.item() == self.eos:
                break
            tokens.append(tok.item())
        return tokens, h

    def generate(self, src):
        ctx = self.encode(src)
        h = ctx
        seq = torch.full((1, 1), self.bos, dtype=torch.long)
        while seq.size(1) <= self.max_len and seq[0, -1] != self.eos:
            prefix = self.embed(seq).mean(1)
            h = self.cell(torch.cat([prefix, ctx], -1), h)
            logits = self.out(torch.cat([h, ctx], -1))
            logits[:, self.eos] += self.eos_ramp * (seq.size(1) - 1)
            tok = logits.argmax(-1)
            seq = torch.cat([seq, tok.view(1, 1)], 1)
        return seq


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.randn_inputs(n, seed, (1, 6, 16))


@torch.no_grad()
def _eos_margins(model: GreedyDecoder, src: torch.Tensor, prefix_mean: bool) -> torch.Tensor:
    """Batched decode with EOS masked out; returns (N, max_len) EOS-minus-best margins.

    Shifting the EOS bias by d does not change any non-EOS argmax, so a sequence
    stops at the first step t with margin[t] + d > 0 (or runs to max_len).
    """
    ctx = model.encode(src)
    h = ctx
    n = src.shape[0]
    seq = torch.full((n, 1), model.bos, dtype=torch.long)
    margins = []
    for _ in range(model.max_len):
        inp = model.embed(seq).mean(1) if prefix_mean else model.embed(seq[:, -1])
        h = model.cell(torch.cat([inp, ctx], -1), h)
        logits = model.out(torch.cat([h, ctx], -1))
        eos_logit = logits[:, model.eos].clone()
        logits[:, model.eos] = -math.inf
        best, tok = logits.max(-1)
        margins.append(eos_logit - best)
        seq = torch.cat([seq, tok[:, None]], 1)
    return torch.stack(margins, 1)


def _length_entropy(margins: torch.Tensor, d: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
    """Entropy of the stop-step distribution for every (d, ramp) pair; shape (D, R)."""
    n, t_max = margins.shape
    t = torch.arange(t_max, dtype=margins.dtype)
    shifted = margins[None, None] + d[:, None, None, None] + ramp[None, :, None, None] * t
    stop = torch.cat([shifted > 0, torch.ones(*shifted.shape[:3], 1, dtype=torch.bool)], -1)
    first = stop.float().argmax(-1)  # (D, R, N) in 0..t_max
    p = F.one_hot(first, t_max + 1).float().mean(2)
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


@torch.no_grad()
def _calibrate(model: GreedyDecoder, src: torch.Tensor) -> None:
    """Make stopping depend on the source, then pick EOS bias shift and ramp by grid search.

    A random decoder's EOS score is dominated by step-to-step noise; a trained one
    decides the output length from the source. Emulate that by letting the output
    layer read mostly the context vector, then choose the EOS bias shift and ramp
    maximising the worse of the two entry points' length-distribution entropies.
    """
    hidden = model.cell.hidden_size
    model.out.weight[:, :hidden] *= 0.5
    model.out.weight[:, hidden:] *= 4.0
    ms = [_eos_margins(model, src, False), _eos_margins(model, src, True)]
    span = max(m.abs().max().item() for m in ms)
    d = torch.linspace(-span, span, 81)
    ramp = torch.linspace(0.0, span / 4, 41)
    score = torch.minimum(*[_length_entropy(m, d, ramp) for m in ms])
    i, j = divmod(int(score.argmax()), len(ramp))
    model.out.bias[model.eos] += d[i].item()
    model.eos_ramp = ramp[j].item()


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(GreedyDecoder, seed)
    _calibrate(model, common.calibration_batch(sample_inputs, 512, seed))
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    """Number of tokens emitted before EOS / max_len (0 .. max_len)."""
    tokens, _ = output
    return len(tokens)


PATHS = set(range(9))  # 0 .. max_len


def path_key_generate(model, inputs: tuple, output):
    """Final length of ``seq`` (BOS included): 2 .. max_len + 1."""
    return output.size(1)


EXTRA_METHODS = {"generate": path_key_generate}


if __name__ == "__main__":
    model, example = make()
    for name, key_fn in [(METHOD, path_key), ("generate", path_key_generate)]:
        keys = common.path_keys(model, sample_inputs(200), key_fn, name)
        common.print_frequencies(keys, "paths", 6, prefix=f"{name}: ")
