"""examples/digits: the data split, training, the dynamic behaviour of both networks, and
the optimize.py script (prune, quantize, compare) end to end on a small budget."""

from __future__ import annotations

import pytest
import torch

from examples.digits import data, models, train

EPOCHS = 3  # the --quick budget, so that optimize.py --quick reuses these checkpoints
N_SINGLE = 150  # test images run one at a time through the batch-1 forward


@pytest.fixture(scope="module")
def split():
    return data.load(0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tmp_path_factory.mktemp("digits-ckpt")


@pytest.fixture(scope="module")
def multi_exit(split, ckpt):
    return train.load_or_train("multi_exit", ckpt, epochs=EPOCHS, split=split, verbose=False)


@pytest.fixture(scope="module")
def gated(split, ckpt):
    return train.load_or_train("gated", ckpt, epochs=EPOCHS, split=split, verbose=False)


def test_split_shapes_and_range(split):
    x_train, y_train, x_test, y_test = split
    assert x_train.shape == (1347, 1, 16, 16) and x_test.shape == (450, 1, 16, 16)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert y_train.shape == (1347,) and y_test.shape == (450,)
    assert 0.0 <= float(x_train.min()) and float(x_train.max()) <= 1.0
    # stratified: every class holds about 25 % of its images in the test split
    counts = torch.bincount(y_test, minlength=10) / (
        torch.bincount(y_test, minlength=10) + torch.bincount(y_train, minlength=10))
    assert ((counts - 0.25).abs() < 0.01).all()


def test_split_is_disjoint_and_seeded():
    idx_train, idx_test = data.split_indices(0)
    assert not set(idx_train.tolist()) & set(idx_test.tolist())
    assert sorted(idx_train.tolist() + idx_test.tolist()) == list(range(1797))
    again_train, again_test = data.split_indices(0)
    assert torch.equal(idx_test, again_test) and torch.equal(idx_train, again_train)
    assert not torch.equal(idx_test, data.split_indices(1)[1])
    x_train, _, x_test, _ = data.load(0)
    assert torch.equal(x_test, data.load(0)[2])


def test_training_is_deterministic_and_learns(split, multi_exit):
    again = train.train_multi_exit(epochs=EPOCHS, split=split, verbose=False)
    for key, value in multi_exit.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert train.evaluate(multi_exit, split[2], split[3])["accuracy"] > 0.8


def test_multi_exit_takes_several_exits(split, multi_exit):
    x_test = split[2][:N_SINGLE]
    exits = [models.exit_index(multi_exit, x_test[i:i + 1]) for i in range(len(x_test))]
    assert len(set(exits)) > 1
    _, batched = models.exit_indices(multi_exit, x_test)
    assert batched.tolist() == exits
    with torch.no_grad():
        for i in range(0, len(x_test), 10):  # forward (the Python `return` in a loop) agrees
            logits, exit_id = multi_exit(x_test[i:i + 1])
            assert exit_id == exits[i]


def test_gated_skips_blocks_for_some_inputs(split, gated):
    stats = train.evaluate(gated, split[2], split[3])
    assert stats["accuracy"] > 0.8
    x_test = split[2][:N_SINGLE]
    patterns = [models.gate_pattern(gated, x_test[i:i + 1]) for i in range(len(x_test))]
    assert any(0 in p for p in patterns), "no block is ever skipped"
    assert any(1 in p for p in patterns), "no block ever runs"
    _, on = models.gate_patterns(gated, x_test)
    assert [tuple(row) for row in on.int().tolist()] == patterns
    with torch.no_grad():
        batched, _ = gated.forward_masked(x_test[:8])
        single = torch.cat([gated(x_test[i:i + 1])[0] for i in range(8)])
    torch.testing.assert_close(single, batched, rtol=1e-4, atol=1e-4)


def test_optimize_quick_runs(tmp_path, ckpt, multi_exit, gated, capsys):
    from examples.digits import optimize

    results = optimize.main(["--quick", "--out", str(tmp_path / "out"), "--ckpt", str(ckpt)])
    out = capsys.readouterr().out
    for variant in ("fp32", "pruned 50% (uniform)", "pruned 50% (layer_adaptive)",
                    "pruned 50% (layer_adaptive, rounded)", "int8",
                    "pruned 50% (uniform) + int8", "pruned 50% (uniform), kept"):
        assert out.count(variant) >= 2, variant  # one table row per model
    assert out.count("decisions kept on") == 2  # KeepDecisions reported for both models
    assert set(results) == {"multi_exit", "gated"}
    for rows in results.values():
        fp32 = next(r for r in rows if r.name == "fp32")
        eager = rows[0]
        same = sum(a == b for a, b in zip(fp32.decisions, eager.decisions))
        assert same == len(eager.decisions)  # compiled fp32 takes eager's path every time
        assert all(r.size_kb > 0 for r in rows[1:])
