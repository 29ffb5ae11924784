"""An artifact is data: a mutated manifest loads and runs, or is refused, never runs code.

A small artifact (a while loop and a branch on the host, fusion off) is saved once; each
case mutates a copy of its manifest (drop, retype or corrupt a field, inject statements,
names, operators, attributes, evil strings) and loads it with `dycomp.runtime.load`,
then calls it. Allowed: `ArtifactError` / `ValueError`, or a run whose code is exactly the
runtime generator's output for the mutated data (outputs equal to the original's when
that code is the original's). A canary file that the injected strings would create must
never appear. Explicit cases: code prepended to host.py with its sha256 recomputed (it is
never executed), `__import__` in an expression, an attribute walk, `__builtins__` as a
name, an `exec` statement, a newline out of a comment, a format-2 artifact.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import signal

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import dycomp
from dycomp.runtime import ArtifactError
from dycomp.runtime.hostcode import generate


class LoopBranch(nn.Module):
    """A host while loop and a host branch around three small regions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        n = 0
        while h.sum() > 0 and n < 3:
            h = self.b(h) - 0.5
            n = n + 1
        if h.mean().item() > 0.1:
            return h * 2, n
        return h, n


INPUTS = [np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32) * 3
          for i in range(4)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    model = LoopBranch().eval()
    cm = dycomp.compile(model, (torch.from_numpy(INPUTS[0]),), backend="onnx",
                        fuse_branches=False, check=False)
    art = cm.save(root / "net.dyc")
    manifest = json.loads((art / "manifest.json").read_text())
    with torch.no_grad():
        expected = [model(torch.from_numpy(x)) for x in INPUTS]
    return root, art, manifest, [(h.numpy(), n) for h, n in expected]


def _canary(root):
    return root / "CANARY"


def _evil(root) -> list[str]:
    c = _canary(root)
    return [f"__import__('os').system('touch {c}')", f"x\nimport os\nos.system('touch {c}')",
            "__builtins__", "__class__", "().__class__.__bases__", "exec", "eval", "R", "np",
            "math", "os", "open", "getattr", "__import__", ".__class__", ".system", "np.load",
            "np.save", "math.__dict__", "v1; import os", "lambda: 0", "", "import", "v1",
            f"[__import__('os').system('touch {c}') for x in a]", "print", "run", "_dyc_error"]


def _write(root, art, manifest, name="case.dyc"):
    case = root / name
    if case.exists():
        shutil.rmtree(case)
    shutil.copytree(art, case)
    (case / "manifest.json").write_text(json.dumps(manifest))
    return case


def _outcome(case, manifest) -> tuple:
    """('refused', None) or ('ran', outputs per input); fails on anything else."""
    try:
        rt = dycomp.runtime.load(case)
    except (ArtifactError, ValueError):
        return "refused", None
    program = manifest["host_program"]
    assert rt.program.source == generate(program, manifest["subgraphs"])  # what runs
    results = []
    for x in INPUTS:
        try:
            results.append(_bounded(rt, x))
        except (ArtifactError, ValueError):
            return "refused at call", None
        except _Endless:  # a valid program without its `break` (a statement dropped)
            return "ran without end", None
        except Exception:  # a different, valid program from the table may fail its way
            results.append(None)
    return "ran", results


class _Endless(BaseException):
    """A call that ran past its time: a mutated loop that no longer exits."""


def _bounded(rt, x, seconds: float = 2.0):
    def stop(signum, frame):
        raise _Endless()

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return rt(x)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _paths(node, path=()):
    """Every (container path) of a JSON tree: the places a mutation can hit."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def _get(node, path):
    for k in path:
        node = node[k]
    return node


def _json(root):
    leaves = (st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False,
              allow_infinity=False, width=32) | st.sampled_from(_evil(root)))
    keys = st.sampled_from(["kind", "var", "op", "args", "lit", "expr", "out", "body",
                            "region", "__class__", "exec", "line", "source", "tuple"])
    return st.recursive(leaves, lambda c: st.lists(c, max_size=3)
                        | st.dictionaries(keys, c, max_size=3), max_leaves=6)


def _statement(root):
    kinds = st.sampled_from(["call", "op", "assign", "if", "loop", "break", "continue",
                             "return", "raise", "exec", "import", "eval", "global"])
    evil = st.sampled_from(_evil(root))
    crafted = st.sampled_from([
        {"kind": "op", "out": "v900", "expr": {"op": "__import__", "args": [{"lit": "os"}]}},
        {"kind": "op", "out": None, "expr": {"op": ".system", "args": [{"var": "v1"}]}},
        {"kind": "exec", "code": f"open('{_canary(root)}', 'w')"},
        {"kind": "raise", "module": "os", "qualname": "system", "args": [f"touch {_canary(root)}"]},
        {"kind": "return", "value": {"op": "comprehension", "args": [
            {"lit": {"tuple": ["a"]}}, {"lit": "[__import__('os') for x in a]"},
            {"lit": 1}]}},
    ])
    free = st.builds(lambda k, f: {"kind": k, **f}, kinds,
                     st.dictionaries(st.sampled_from(["out", "expr", "region", "args", "outs",
                                                      "cond", "value", "line", "source"]),
                                     evil | _json(root), max_size=3))
    return crafted | free


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_manifest_is_refused_or_runs_generated_code(saved, data):
    root, art, manifest, expected = saved
    m = copy.deepcopy(manifest)
    target = m["host_program"] if data.draw(st.integers(0, 9)) else m
    paths = [p for p in _paths(target) if p]
    path = data.draw(st.sampled_from(paths))
    parent, key = _get(target, path[:-1]), path[-1]
    how = data.draw(st.sampled_from(["drop", "retype", "corrupt", "inject statement",
                                     "inject attribute", "evil string"]))
    if how == "drop":
        del parent[key]
    elif how in ("retype", "corrupt"):
        parent[key] = data.draw(_json(root))
    elif how == "evil string":
        parent[key] = data.draw(st.sampled_from(_evil(root)))
    elif how == "inject attribute" and isinstance(parent[key], dict):
        parent[key][data.draw(st.sampled_from(["__class__", "code", "exec", "globals"]))] = \
            data.draw(_json(root))
    else:
        bodies = [p for p in _paths(m["host_program"]) if p and p[-1] in ("body", "then",
                                                                          "orelse")]
        body = _get(m["host_program"], data.draw(st.sampled_from(bodies)))
        body.insert(data.draw(st.integers(0, len(body))), data.draw(_statement(root)))
    case = _write(root, art, m)
    outcome = _outcome(case, m)
    event(f"{how}: {outcome[0]}")  # pytest --hypothesis-show-statistics
    assert not _canary(root).exists()
    if outcome[0] == "ran" and m.get("host_program") is not None:
        try:
            same = generate(m["host_program"]) == generate(manifest["host_program"])
        except ArtifactError:
            same = False
        if same:  # the mutation did not change the program: same outputs
            _assert_outputs(outcome[1], expected)


def _assert_outputs(results, expected):
    for got, (h, n) in zip(results, expected):
        assert got is not None and got[1] == n
        np.testing.assert_allclose(got[0], h, rtol=1e-4, atol=1e-4)


def test_code_prepended_to_host_py_is_never_executed(saved):
    root, art, manifest, expected = saved
    case = _write(root, art, manifest, "prepended.dyc")
    host = case / "host.py"
    host.write_text(f"import os; os.system('touch {_canary(root)}')\n" + host.read_text())
    m = json.loads((case / "manifest.json").read_text())
    m["files"]["host.py"] = hashlib.sha256(host.read_bytes()).hexdigest()
    (case / "manifest.json").write_text(json.dumps(m))
    rt = dycomp.runtime.load(case)
    _assert_outputs([rt(x) for x in INPUTS], expected)
    assert not _canary(root).exists() and "import os" not in rt.program.source


def _first_op(program) -> int:
    return next(i for i, s in enumerate(program["body"]) if s["kind"] == "op")


@pytest.mark.parametrize("edit, field", [
    (lambda p, i: p["body"][i].update(expr={"op": "__import__", "args": [{"lit": "os"}]}),
     "host.body[{i}].expr.op"),
    (lambda p, i: p["body"][i].update(expr={"op": ".__class__", "args": [{"tuple": []}]}),
     "host.body[{i}].expr.op"),
    (lambda p, i: p["body"][i].update(expr={"var": "().__class__.__bases__"}),
     "host.body[{i}].expr.var"),
    (lambda p, i: p["body"][i].update(out="__builtins__"), "host.body[{i}].out"),
    (lambda p, i: p["body"][i].update(expr={"op": "comprehension", "args": [
        {"lit": {"tuple": ["a"]}}, {"lit": "[c for c in ().__class__.__bases__]"},
        {"lit": 1}]}), "host.body[{i}].expr.args[1]"),
    (lambda p, i: p["body"][i].update(expr={"op": "add", "args": [{"lit": 1}]}),
     "host.body[{i}].expr.args"),
    (lambda p, i: p["body"][i].update(line="x.py:1\nimport os"), "host.body[{i}].line"),
    (lambda p, i: p["body"].insert(0, {"kind": "exec", "code": "import os"}),
     "host.body[0].kind"),
    (lambda p, i: p["body"][i].update(expr={"op": "len", "args": [{"lit": 1}]},
                                      sneaky={"x": 1}), "host.body[{i}].sneaky"),
])
def test_crafted_programs_are_refused_naming_the_field(saved, edit, field):
    root, art, manifest, _ = saved
    m = copy.deepcopy(manifest)
    i = _first_op(m["host_program"])
    edit(m["host_program"], i)
    with pytest.raises(ArtifactError) as e:
        dycomp.runtime.load(_write(root, art, m, "crafted.dyc"))
    assert field.format(i=i) in str(e.value)
    assert not _canary(root).exists()


def test_format_2_artifact_is_refused_with_a_hint(saved):
    root, art, manifest, _ = saved
    m = {k: v for k, v in manifest.items() if k != "host_program"}
    m["format_version"] = 2
    with pytest.raises(ArtifactError, match="recompile"):
        dycomp.runtime.load(_write(root, art, m, "old.dyc"))
