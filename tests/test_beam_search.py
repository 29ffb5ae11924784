"""Beam search whose beam shrinks as hypotheses finish (show-attend-tell style), greedy
decoding that appends words in a data-dependent loop, and an empty host index list
(issues #21, #22.5, #22.6): same outputs as eager on backends torch and onnx."""

from __future__ import annotations

import collections

import torch
import torch.nn.functional as F
from helpers import assert_matches_eager
from torch import nn


class Attention(nn.Module):
    def __init__(self, enc, hid, att):
        super().__init__()
        self.encoder_att = nn.Linear(enc, att)
        self.decoder_att = nn.Linear(hid, att)
        self.full_att = nn.Linear(att, 1)

    def forward(self, encoder_out, decoder_hidden):
        att1 = self.encoder_att(encoder_out)
        att2 = self.decoder_att(decoder_hidden)
        att = self.full_att(torch.relu(att1 + att2.unsqueeze(1))).squeeze(2)
        alpha = F.softmax(att, dim=1)
        awe = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)
        return awe, alpha


class BeamCaptioner(nn.Module):
    """Show-attend-tell style beam search whose beam shrinks as hypotheses finish."""

    def __init__(self, vocab_size=20, emb=16, enc=16, hid=16, beam_size=4, end_bias=1.5):
        super().__init__()
        torch.manual_seed(0)
        self.vocab_size, self.beam_size = vocab_size, beam_size
        self.word_map = {"<start>": 1, "<end>": 2}
        self.attention = Attention(enc, hid, 16)
        self.embedding = nn.Embedding(vocab_size, emb)
        self.decode_step = nn.LSTMCell(emb + enc, hid)
        self.init_h = nn.Linear(enc, hid)
        self.init_c = nn.Linear(enc, hid)
        self.fc = nn.Linear(hid, vocab_size)
        with torch.no_grad():
            self.fc.bias[self.word_map["<end>"]] += end_bias

    def forward(self, encoder_out):
        k = self.beam_size
        vocab_size = self.vocab_size
        word_map = self.word_map
        num_pixels, encoder_dim = encoder_out.size(1), encoder_out.size(2)
        encoder_out = encoder_out.expand(k, num_pixels, encoder_dim)
        k_prev_words = torch.LongTensor([[word_map["<start>"]]] * k)
        seqs = k_prev_words
        top_k_scores = torch.zeros(k, 1)
        complete_seqs = list()
        complete_seqs_scores = list()
        step = 1
        beams = []
        mean_encoder_out = encoder_out.mean(dim=1)
        h, c = self.init_h(mean_encoder_out), self.init_c(mean_encoder_out)
        while True:
            embeddings = self.embedding(k_prev_words).squeeze(1)
            awe, _ = self.attention(encoder_out, h)
            h, c = self.decode_step(torch.cat([embeddings, awe], dim=1), (h, c))
            scores = self.fc(h)
            scores = F.log_softmax(scores, dim=1)
            scores = top_k_scores.expand_as(scores) + scores
            if step == 1:
                top_k_scores, top_k_words = scores[0].topk(k, 0, True, True)
            else:
                top_k_scores, top_k_words = scores.view(-1).topk(k, 0, True, True)
            prev_word_inds = top_k_words // vocab_size
            next_word_inds = top_k_words % vocab_size
            seqs = torch.cat([seqs[prev_word_inds], next_word_inds.unsqueeze(1)], dim=1)
            incomplete_inds = [ind for ind, next_word in enumerate(next_word_inds) if
                               next_word != word_map["<end>"]]
            complete_inds = list(set(range(len(next_word_inds))) - set(incomplete_inds))
            complete_seqs.extend(seqs[complete_inds].tolist())
            complete_seqs_scores.extend(top_k_scores[complete_inds])
            k -= len(complete_inds)
            beams.append(k)
            if k == 0:
                break
            seqs = seqs[incomplete_inds]
            h = h[prev_word_inds[incomplete_inds]]
            c = c[prev_word_inds[incomplete_inds]]
            encoder_out = encoder_out[prev_word_inds[incomplete_inds]]
            top_k_scores = top_k_scores[incomplete_inds].unsqueeze(1)
            k_prev_words = next_word_inds[incomplete_inds].unsqueeze(1)
            if step > 50:
                break
            step += 1
        i = complete_seqs_scores.index(max(complete_seqs_scores))
        seq = complete_seqs[i]
        return seq, beams


class GreedyWords(nn.Module):
    """Greedy decoding: `words.append(w)` in a data-dependent loop, cat/stack after it."""

    def __init__(self, vocab_size=20, emb=16, hid=16, end_bias=0.7):
        super().__init__()
        torch.manual_seed(3)
        self.embedding = nn.Embedding(vocab_size, emb)
        self.cell = nn.LSTMCell(emb, hid)
        self.init_h = nn.Linear(emb, hid)
        self.fc = nn.Linear(hid, vocab_size)
        self.end = 2
        with torch.no_grad():
            self.fc.bias[self.end] += end_bias

    def forward(self, feats):
        h = torch.tanh(self.init_h(feats))
        c = torch.zeros_like(h)
        w = torch.ones(1, dtype=torch.long)
        words, probs = [], []
        for _step in range(12):
            h, c = self.cell(self.embedding(w), (h, c))
            p = F.softmax(self.fc(h), -1)
            w = p.argmax(-1)
            words.append(w)
            probs.append(p.max(-1)[0])
            if w.item() == self.end:
                break
        return torch.cat(words), torch.stack(probs, 1), len(words)


class EmptyIndex(nn.Module):
    """Rows picked by a host index list that may be empty (`seqs[[]]`, #22.6)."""

    def forward(self, x):
        keep = [i for i, row in enumerate(x) if row.sum() > 0]
        return x[keep] * 2, len(keep)


def _feats(shape, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (0.3, 1.0, 3.0)[i % 3] for i in range(n)]


def test_beam_search_shrinking_beam():
    model = BeamCaptioner(end_bias=0.8)
    xs = _feats((1, 6, 16), 50)
    with torch.no_grad():
        patterns = collections.Counter(tuple(model(x)[1]) for x in xs)
    # beams finish at varying steps: all at once, one by one, late, never (step cap)
    assert {(3, 0), (3, 1, 0)} <= set(patterns) and len(patterns) >= 4
    assert any(len(p) > 10 and p[-1] == 0 for p in patterns)
    assert any(len(p) == 51 for p in patterns)
    long_ones = [x for x in xs if len(model(x)[1]) > 10]
    for backend, inputs in (("torch", xs[:12] + long_ones), ("onnx", xs)):
        cm, _ = assert_matches_eager(model, inputs, backend=backend)
        assert "set([0, 1, 2, 3])" not in cm.host_source  # recomputed from the beam size


def test_greedy_words_cat_and_stack():
    model = GreedyWords(end_bias=0.3)
    xs = _feats((1, 16), 30)
    with torch.no_grad():
        assert {model(x)[2] for x in xs} == {1, 7, 12}
    for backend in ("torch", "onnx"):
        assert_matches_eager(model, xs, backend=backend)


def test_empty_index_list():
    xs = [-torch.ones(4, 3)] + _feats((4, 3), 20)
    with torch.no_grad():
        assert {EmptyIndex()(x)[1] for x in xs} >= {0, 1, 2, 3}
    for backend in ("torch", "onnx"):
        assert_matches_eager(EmptyIndex(), xs, backend=backend)
