"""Greedy GRU encoder-decoder (seq2seq inference loop).

A GRU encodes a 1x6x16 source sequence; a GRUCell decoder then emits tokens
greedily. Three entry points:

* ``forward``: ``for t in range(self.max_len)`` with ``break`` when
  ``tok.item() == self.eos``; returns a variable-length Python list of ints plus
  the final hidden state.
* ``generate``: a ``while`` loop whose condition reads a tensor
  (``seq[0, -1] != self.eos``); the loop-carried ``seq`` grows by one column per
  step via ``torch.cat`` and every step attends (mean-pools) over the whole
  prefix, so the loop body sees a different sequence length each iteration.
* ``attend``: the ``forward`` loop with dot-product attention over all encoder
  outputs, written naively: the key and value projections of the (unchanging)
  encoder outputs are recomputed at every step. It has its own ``att_cell`` and
  ``out_att`` layers; ``make_attention()`` builds a big variant for benchmarks.

All three apply a length penalty written as an in-place update of the logits
(``logits[:, self.eos] += self.eos_ramp * t``; ``attend`` has its own
``att_eos_ramp``). Random weights; the EOS biases and ramps are set in ``make()``
(from a fixed calibration batch) so that random inputs stop at every length from 0
to ``max_len``."""

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
        # attend(): dot-product attention over the encoder outputs (created after the
        # layers above, so their random init does not depend on these)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.query = nn.Linear(hidden, hidden)
        self.att_cell = nn.GRUCell(emb + hidden, hidden)
        self.out_att = nn.Linear(2 * hidden, vocab)
        self.att_eos_ramp = 0.0

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

    def attend(self, src):
        enc, h = self.encoder(src)
        h = h[0]
        tok = torch.full((1,), self.bos, dtype=torch.long)
        tokens = []
        for t in range(self.max_len):
            keys = self.key(enc)  # (1, S, H)
            values = self.value(enc)  # (1, S, H)
            q = self.query(h)  # (1, H)
            scores = (keys @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.size(-1))
            att = torch.softmax(scores, -1)  # (1, S)
            ctx = (att.unsqueeze(1) @ values).squeeze(1)  # (1, H)
            h = self.att_cell(torch.cat([self.embed(tok), ctx], -1), h)
            logits = self.out_att(torch.cat([h, ctx], -1))
            logits[:, self.eos] += self.att_eos_ramp * t
            tok = logits.argmax(-1)
            if tok.item() == self.eos:
                break
            tokens.append(tok.item())
        return tokens, h


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def sample_inputs(n: int, seed: int = 0, src_len: int = 6) -> list[tuple]:
    return common.randn_inputs(n, seed, (1, src_len, 16))


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


@torch.no_grad()
def _attend_margins(model: GreedyDecoder, src: torch.Tensor) -> torch.Tensor:
    """``_eos_margins`` for ``attend``: batched attention decode with EOS masked out."""
    enc, h = model.encoder(src)
    h = h[0]
    tok = torch.full((src.shape[0],), model.bos, dtype=torch.long)
    keys, values = model.key(enc), model.value(enc)
    margins = []
    for _ in range(model.max_len):
        q = model.query(h)
        scores = (keys @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.size(-1))
        ctx = (torch.softmax(scores, -1).unsqueeze(1) @ values).squeeze(1)
        h = model.att_cell(torch.cat([model.embed(tok), ctx], -1), h)
        logits = model.out_att(torch.cat([h, ctx], -1))
        eos_logit = logits[:, model.eos].clone()
        logits[:, model.eos] = -math.inf
        best, tok = logits.max(-1)
        margins.append(eos_logit - best)
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
    _read_context(model.out, model.cell.hidden_size)
    d, model.eos_ramp = _fit_eos([_eos_margins(model, src, False),
                                  _eos_margins(model, src, True)])
    model.out.bias[model.eos] += d


@torch.no_grad()
def _calibrate_attend(model: GreedyDecoder, src: torch.Tensor) -> None:
    """``_calibrate`` for ``attend``: touches only the attention decoder's own layers."""
    _read_context(model.out_att, model.att_cell.hidden_size)
    d, model.att_eos_ramp = _fit_eos([_attend_margins(model, src)])
    model.out_att.bias[model.eos] += d


def _read_context(out: nn.Linear, hidden: int) -> None:
    out.weight[:, :hidden] *= 0.5
    out.weight[:, hidden:] *= 4.0


def _fit_eos(ms: list[torch.Tensor]) -> tuple[float, float]:
    """(EOS bias shift, ramp) maximising the worst length entropy over the margins ``ms``."""
    span = max(m.abs().max().item() for m in ms)
    d = torch.linspace(-span, span, 81)
    ramp = torch.linspace(0.0, span / 4, 41)
    scores = [_length_entropy(m, d, ramp) for m in ms]
    score = scores[0] if len(scores) == 1 else torch.minimum(*scores)
    i, j = divmod(int(score.argmax()), len(ramp))
    return d[i].item(), ramp[j].item()


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(GreedyDecoder, seed)
    src = common.calibration_batch(sample_inputs, 512, seed)
    _calibrate(model, src)
    _calibrate_attend(model, src)
    return model, sample_inputs(1, seed=seed)[0]


def make_attention(seed: int = 0, src_len: int = 64, hidden: int = 256, max_len: int = 16,
                   calibrate: bool = False) -> tuple[nn.Module, tuple]:
    """A big variant for benchmarking ``attend`` (a ``(1, src_len, 16)`` source).

    Per decode step the key and value projections of all ``src_len`` encoder outputs
    cost ``2 * src_len * hidden**2`` multiply-adds (8.4 M at the defaults), about 16x
    the rest of the step (query, scores, context, GRUCell, output layer: ~0.51 M).
    Without ``calibrate`` the EOS row of ``out_att`` is zeroed and its bias set to
    -100, so EOS never wins and every input runs exactly ``max_len`` steps (the break
    stays in the code); with it, ``attend`` is calibrated as in ``make()``.
    ``forward`` / ``generate`` are left uncalibrated either way.
    """
    model = common.seeded(lambda: GreedyDecoder(hidden=hidden, max_len=max_len), seed)
    with torch.no_grad():
        if calibrate:
            draw = lambda n, seed: sample_inputs(n, seed, src_len)  # noqa: E731
            _calibrate_attend(model, common.calibration_batch(draw, 512, seed))
        else:
            model.out_att.weight[model.eos] = 0.0
            model.out_att.bias[model.eos] = -100.0
    return model, sample_inputs(1, seed=seed, src_len=src_len)[0]


def path_key(model, inputs: tuple, output):
    """Number of tokens emitted before EOS / max_len (0 .. max_len)."""
    tokens, _ = output
    return len(tokens)


PATHS = set(range(9))  # 0 .. max_len


def path_key_generate(model, inputs: tuple, output):
    """Final length of ``seq`` (BOS included): 2 .. max_len + 1."""
    return output.size(1)


def path_key_attend(model, inputs: tuple, output):
    """Number of tokens ``attend`` emitted before EOS / max_len (0 .. max_len)."""
    tokens, _ = output
    return len(tokens)


EXTRA_METHODS = {"generate": path_key_generate, "attend": path_key_attend}


if __name__ == "__main__":
    model, example = make()
    for name, key_fn in [(METHOD, path_key), *EXTRA_METHODS.items()]:
        keys = common.path_keys(model, sample_inputs(200), key_fn, name)
        common.print_frequencies(keys, "paths", 6, prefix=f"{name}: ")
