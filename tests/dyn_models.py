"""Small models for the dynamic-aware passes' tests: each one has a construct a pass must
rewrite, or a near miss it must leave alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedBlock(nn.Module):
    """A residual block gated by arithmetic; `form` picks how the gate is written."""

    def __init__(self, c: int = 16, form: str = "blend"):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.gate = nn.Linear(c, 1)
        self.form = form

    def forward(self, x):
        p = torch.sigmoid(self.gate(x.mean((2, 3))))
        hard = (p > 0.5).float().view(-1, 1, 1, 1)
        soft = p.view(-1, 1, 1, 1)
        f = F.relu(self.conv(x))
        if self.form == "blend":
            return hard * f + (1 - hard) * x
        if self.form == "flipped":  # the gated operand on the complement's side
            return (1 - hard) * x + f * hard
        if self.form == "where":
            return torch.where(hard > 0.5, f, x)
        if self.form == "residual":
            return x + hard * f
        if self.form == "ste":  # straight-through estimator, as trained
            m = hard - soft.detach() + soft
            return m * f + (1 - m) * x
        if self.form == "soft":  # not a 0/1 gate: must stay arithmetic
            return soft * f + (1 - soft) * x
        if self.form == "shared":  # f(x) is also read elsewhere: nothing to skip
            return hard * f + (1 - hard) * x + 0.1 * f.mean()
        raise ValueError(self.form)


class GatedNet(nn.Module):
    def __init__(self, forms=("blend", "where", "residual"), c: int = 16):
        super().__init__()
        self.blocks = nn.ModuleList([GatedBlock(c, f) for f in forms])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class AttnDecoder(nn.Module):
    """Greedy decoding with attention whose key/value projections sit inside the loop."""

    def __init__(self, h: int = 32, mutate: str = ""):
        super().__init__()
        self.encoder = nn.GRU(8, h, batch_first=True)
        self.key, self.value, self.query = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.cell = nn.GRUCell(2 * h, h)
        self.embed = nn.Embedding(5, h)
        self.out = nn.Linear(2 * h, 5)
        self.mutate = mutate
        with torch.no_grad():  # decode lengths spread over 1..6 for random inputs (seed 0)
            self.out.weight.mul_(2.0)

    def forward(self, src):
        enc, h = self.encoder(src)
        h = h[0]
        tok = torch.zeros(1, dtype=torch.long)
        tokens = []
        for _ in range(6):
            if self.mutate == "inplace":
                enc.mul_(0.9)
            elif self.mutate == "assign":
                enc = enc * 0.9
            keys, values = self.key(enc), self.value(enc)
            att = torch.softmax((keys @ self.query(h).unsqueeze(-1)).squeeze(-1), -1)
            ctx = (att.unsqueeze(1) @ values).squeeze(1)
            h = self.cell(torch.cat([self.embed(tok), ctx], -1), h)
            tok = self.out(torch.cat([h, ctx], -1)).argmax(-1)
            if tok.item() == 1:
                break
            tokens.append(tok.item())
        return tokens, h


class CommonStart(nn.Module):
    """Both arms of a decision start with the same layer on the same input."""

    def __init__(self):
        super().__init__()
        self.a, self.shared = nn.Linear(16, 16), nn.Linear(16, 64)
        self.h1, self.h2 = nn.Linear(64, 4), nn.Linear(64, 4)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:
            y = self.shared(x).relu()
            out = self.h1(y)
        else:
            y = self.shared(x).relu()
            out = self.h2(y) * 2
        return out


class CheapArms(nn.Module):
    """Cheap arms that also choose a Python branch id."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)

    def forward(self, x):
        x = self.a(x)
        if x.mean() > 0:
            x = x.relu()
            k = 0
        else:
            x = x.tanh()
            k = 1
        return x * 2, k


class HeavyArms(nn.Module):
    """Arms that cost more than a dispatch: speculation must not fire."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b, self.c = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 5, padding=2)

    def forward(self, x):
        x = self.a(x)
        if x.mean() > 0:
            x = self.b(x)
        else:
            x = self.c(x)
        return x


class BreakLoop(nn.Module):
    """A cheap arm that leaves a loop: speculation must not move a `break`."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)

    def forward(self, x):
        for _ in range(5):
            x = self.a(x)
            if x.mean() > 0.1:
                x = x.relu()
                break
        return x


class IndexSwitch(nn.Module):
    """Decisions on an integer read out of a tensor, on a float read out, and on a float
    truncated to an int."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 8)
        self.heads = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

    def forward(self, x):
        h = self.a(x)
        idx = int(h.argmax(-1).item())
        if idx == 2:
            y = self.heads[0](h)
        elif idx > 5:
            y = self.heads[1](h) * h[0, idx]
        else:
            y = self.heads[2](h)
        if h.max().item() > 0.5:  # in double precision on the host
            y = y + 1
        if int(h.min().item()) < 0:  # truncated: stays a host decision
            y = y - 1
        return y, idx
