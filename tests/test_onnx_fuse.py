"""Cheap control flow: host branches lowered into ONNX `If` nodes (backend onnx)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import dycomp
from dycomp.backends.onnx_backend import all_nodes
from dycomp.backends.onnx_conditions import drop_noop_reshapes
from dycomp.check import compare
from dycomp.runtime.onnx_layout import static_shapes
from examples.zoo import ZOO
from tests.helpers import assert_matches_eager


def _if_nodes(model) -> int:
    return sum(n.op_type == "If" for n in model.graph.node)


def _all_ops(g) -> Counter:
    """Op types of a graph and its subgraphs."""
    return Counter(n.op_type for n in all_nodes(g))


@pytest.fixture(scope="module")
def gated54():
    model, example = ZOO["gated54"].make()
    return model, dycomp.compile(model, example, backend="onnx")


def test_gated_network_becomes_one_subgraph(gated54):
    model, cm = gated54
    assert len(cm.graph.regions) == 1
    (region,) = cm.graph.regions.values()
    assert _if_nodes(region.onnx) == 54
    assert "bool(" not in cm.host_source  # no host decision left
    for inputs in ZOO["gated54"].sample_inputs(60):
        with torch.no_grad():
            expected = model(*inputs)
        assert compare(expected, cm(*inputs)) is None


def test_early_exits_fuse_into_nested_ifs():
    """multi_exit's exits are nested branches that choose the logits, the exit id and a
    flag: one call, the exits as nested `If` nodes, Python values converted back."""
    mod = ZOO["multi_exit"]
    model, example = mod.make()
    cm = dycomp.compile(model, example, backend="onnx")
    assert len(cm.graph.regions) == 1 and "if v" not in cm.host_source
    (region,) = cm.graph.regions.values()
    assert _all_ops(region.onnx.graph)["If"] == 4
    outs = []
    assert_matches_eager(model, mod.sample_inputs(40), cm=cm, outputs=outs)
    assert all(type(o[1]) is int and type(o[2]) is bool for o in outs)
    exits = {o[1] for o in outs}
    assert len(exits) >= 3


class IntBranch(nn.Module):
    """A branch whose result leaves as a Python int must stay on the host."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            y, k = self.f(x), 1
        else:
            y, k = self.f(-x), 0
        return torch.relu(self.f(y)), k


def test_branch_with_python_values_is_not_fused():
    m = IntBranch().eval()
    cm = dycomp.compile(m, (torch.randn(1, 4),), backend="onnx")
    assert "if v" in cm.host_source
    for s in (1.0, -1.0):
        x = torch.ones(1, 4) * s
        assert compare(m(x), cm(x)) is None


# -- loops lowered into ONNX `Loop` ----------------------------------------------------------
@pytest.mark.parametrize("name,method", [("act", "forward"), ("decoder", "forward"),
                                         ("decoder", "attend")])
def test_zoo_loops_become_one_onnx_loop(name, method):
    """The halting loop and the greedy decoders (break, a Python counter, token lists)
    run as one ONNX `Loop`: one subgraph call, every path key covered, outputs equal."""
    mod = ZOO[name]
    model, example = mod.make()
    fn = getattr(model, method)
    cm = dycomp.compile(fn, example, backend="onnx")
    assert cm.graph.stats()["loops"] == 0 and cm.graph.stats()["region_calls"] == 1
    assert sum(_all_ops(r.onnx.graph)["Loop"] for r in cm.graph.regions.values()) == 1
    outs = []
    assert_matches_eager(fn, mod.sample_inputs(60), cm=cm, outputs=outs)
    keys = {len(o[0]) if name == "decoder" else o[1] for o in outs}
    assert len(keys) >= 5  # many step counts / output lengths


class HostLoops(nn.Module):
    """A `while` loop with a rotated test, a break on a float read, a continue, a list of
    Python ints and a Python float accumulated from `.item()`."""

    def __init__(self, returns: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Linear(6, 6)
        self.returns = returns

    def forward(self, x):
        h, n, total, seen = x, 0, 0.0, []
        while n < 7:
            h = torch.tanh(self.f(h) + 0.6 * h)
            n += 1
            if h.sum().item() > 1.0:
                break
            if h.mean() < -0.05:
                continue
            if self.returns and h.max() > 0.9:
                return h, -1, total, seen
            seen.append(int(h.argmax()))
            total = total + h.max().item()
        return h, n, total, seen


class AndLoop(nn.Module):
    """A `while` test joined by `and`: a tensor comparison, then a Python one, so the
    joined value is a tensor on one path and a Python bool on the other."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Linear(6, 6)

    def forward(self, x):
        k = 0
        while x.sum() > -1.5 and k < 6:
            x = torch.tanh(self.f(x)) - 0.2
            k += 1
        return x, k


def test_while_test_joined_by_and_is_one_loop():
    model = AndLoop().eval()
    xs = _loop_inputs(40)
    cm = dycomp.compile(model, (xs[0],), backend="onnx")
    assert cm.graph.stats()["loops"] == 0 and cm.graph.stats()["region_calls"] == 1
    outs = []
    assert_matches_eager(model, xs, cm=cm, outputs=outs)
    assert len({o[1] for o in outs}) >= 3 and all(type(o[1]) is int for o in outs)


class NestedLoops(nn.Module):
    """A `while` in a `while`: both carry `y` (phis that feed each other), and both
    bodies hold work no iteration changes (`self.f(x)`, `self.g(x)`)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f, self.g, self.h = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        y, k = torch.zeros_like(x), 0
        while y.sum() < 1.0 and k < 5:
            u, j = torch.tanh(self.g(x)), 0
            while y.mean() < 0.1 and j < 3:
                y = torch.tanh(self.h(y) + self.f(x) + u)
                j += 1
            k += 1
        return y, k


def test_nested_loops_are_one_call_with_invariants_outside():
    """Both loops become ONNX `Loop`s in one call (the carried `y` is known to be a
    tensor though its phis feed each other), `f(x)` and `g(x)` are computed once before
    them, and the results match eager."""
    model = NestedLoops().eval()
    xs = [x * 3 for x in _loop_inputs(40)]
    cm = dycomp.compile(model, (xs[0],), backend="onnx")
    assert cm.graph.stats()["region_calls"] == 1 and "while" not in cm.host_source
    (region,) = cm.graph.regions.values()
    loops = [n for n in all_nodes(region.onnx.graph) if n.op_type == "Loop"]
    assert len(loops) == 2
    assert sum(n.op_type == "Gemm" for n in region.onnx.graph.node) == 2  # f(x), g(x)
    assert sum(n.op_type == "Gemm" for n in all_nodes(region.onnx.graph)) == 3  # and h(y)
    outs = []
    assert_matches_eager(model, xs, cm=cm, outputs=outs)
    assert len({o[1] for o in outs}) >= 2


def _decisions(v, c, y):
    """Python-float comparisons of `v` and `c`, both ways round, added to `y` as bits."""
    if v > c:
        y = y + 1
    if v >= c:
        y = y + 2
    if v < c:
        y = y + 4
    if v <= c:
        y = y + 8
    if c < v:
        y = y + 16
    if c >= v:
        y = y + 32
    return y


class FloatReads(nn.Module):
    """A float32 read compared with a Python number; with `loop`, inside a one-trip loop
    and with a second float32 read (a buffer holding float32(c)) instead."""

    def __init__(self, c, loop: bool):
        super().__init__()
        self.c, self.loop = c, loop
        with np.errstate(over="ignore"):
            self.register_buffer("t", torch.tensor(np.float32(c)))

    def forward(self, x):
        y = torch.zeros_like(x)
        if not self.loop:
            return _decisions(x.sum().item(), self.c, y)
        n = 0
        while y.sum() < 64 and n < 1:  # one trip, a loop the host cannot unroll
            y = _decisions(x.sum().item(), self.t.item(), y)
            n += 1
        return y


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("c", [0.1, 0.5, -2.7, 3, 1e39, -1e39, float("inf")])
def test_float_reads_compare_in_float32_exactly(c, loop):
    """`x.item() > c` on a float32 is decided on the tensor (TensorConditions: the
    branches fuse) against `c` rounded the right way; in a lowered loop, two float32
    reads compare as float32s. No `Cast` to double, one call, and the same answers as
    Python on the float32s next to `c`, on infinities and on NaN."""
    with np.errstate(over="ignore"):
        f = np.float32(c)
    near = [np.nextafter(f, np.float32(d)) for d in (-np.inf, np.inf)] + [f]
    values = [float(v) for v in near] + [0.0, float("inf"), float("-inf"), float("nan")]
    xs = [torch.tensor([[v]]) for v in values]
    model = FloatReads(c, loop).eval()
    cm = dycomp.compile(model, (xs[0],), backend="onnx")
    (region,) = cm.graph.regions.values()
    assert "Cast" not in _all_ops(region.onnx.graph)
    assert ("Loop" in _all_ops(region.onnx.graph)) == loop
    outs = []
    assert_matches_eager(model, xs, cm=cm, outputs=outs)
    assert len({int(o.item()) for o in outs if not o.isnan()}) >= 3


def _loop_inputs(n):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(1, 6, generator=g) * (0.5 + i % 4) for i in range(n)]


def test_loop_with_break_continue_and_python_values():
    model = HostLoops().eval()
    xs = _loop_inputs(60)
    cm = dycomp.compile(model, (xs[0],), backend="onnx")
    assert "while" not in cm.host_source and cm.graph.stats()["region_calls"] == 1
    outs = []
    assert_matches_eager(model, xs, cm=cm, outputs=outs)  # token lists equal, types too
    assert all(type(o[2]) is float for o in outs)  # summed in double, as the host would
    assert all(type(t) is int for o in outs for t in o[3])
    counts = {(o[1], len(o[3])) for o in outs}
    assert len({n for n, _ in counts}) >= 4 and any(n > k for n, k in counts)  # continues


class SomeAppends(nn.Module):
    """A loop that appends a value read from the data on some iterations; a break."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Linear(6, 6)

    def forward(self, x):
        seen, n = [], 0
        while n < 6:
            x = torch.tanh(self.f(x) + 0.5 * x)
            n += 1
            k = x.argmax()
            if x.sum() > 0:
                seen.append(int(k))
            if x.max() > 0.97:
                break
        return x, seen


def test_a_value_appended_on_some_iterations_needs_no_where():
    """An appended value is read only where its flag is set, so the builder takes it from
    the arm that appends: no `Where` with the default of the arms that do not."""
    model = SomeAppends().eval()
    xs = _loop_inputs(60)
    cm = dycomp.compile(model, (xs[0],), backend="onnx")
    assert cm.graph.stats()["region_calls"] == 1
    outs = []
    assert_matches_eager(model, xs, cm=cm, outputs=outs)
    assert len({len(o[1]) for o in outs}) >= 4  # iterations that appended and did not
    (region,) = cm.graph.regions.values()
    (loop,) = (n for n in all_nodes(region.onnx.graph) if n.op_type == "Loop")
    assert "Where" not in {n.op_type for n in all_nodes(loop.attribute[0].g)}


class CountedLoop(nn.Module):
    """`while n < 5` (or `<= 4`) with `n += 1` on every iteration that goes on, and a
    break on the data: the loop runs at most 5 times. `step`: the increment depends on
    the data instead; `start`: n starts at a value read from the data."""

    def __init__(self, form: str):
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Linear(6, 6)
        self.form = form

    def forward(self, x):
        n = int(x.argmax()) if self.form == "start" else 0
        while (n <= 4) if self.form == "le" else (n < 5):
            x = torch.tanh(self.f(x) + 0.5 * x)
            if x.sum().item() > 1.0:
                break
            n += 2 if self.form == "step" and x.mean() > 0 else 1
        return x, n


def _constant(cm, name: str):
    (value,) = (onnx.numpy_helper.to_array(n.attribute[0].t).tolist()
                for r in cm.graph.regions.values() for n in all_nodes(r.onnx.graph)
                if n.op_type == "Constant" and n.output[0] == name)
    return value


def _loop(cm) -> onnx.NodeProto:
    (loop,) = (n for r in cm.graph.regions.values() for n in all_nodes(r.onnx.graph)
               if n.op_type == "Loop")
    return loop


@pytest.mark.parametrize("form", ["lt", "le", "step", "start"])
def test_counted_while_loops_get_a_trip_count_instead_of_a_test(form):
    model = CountedLoop(form).eval()
    xs = _loop_inputs(60)
    cm = dycomp.compile(model, (xs[0],), backend="onnx")
    loop = _loop(cm)
    body_ops = _all_ops(onnx.helper.get_node_attr_value(loop, "body"))
    counted = form in ("lt", "le")
    assert (loop.input[0] != "") == counted, loop.input
    # at most 5 iterations: the first runs before the `Loop` (peeled), 4 in it
    assert not counted or _constant(cm, loop.input[0]) == 4
    assert (body_ops["Less"] + body_ops["LessOrEqual"] == 0) == counted, body_ops
    outs = []
    assert_matches_eager(model, xs, cm=cm, outputs=outs)
    counts = {o[1] for o in outs}  # a break in the first iteration, the bound, and more
    assert len(counts) >= 3 and (not counted or {0, 5} <= counts), counts


class Schedule(nn.Module):
    """A `for` loop whose step size is a Python expression of the counter alone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Linear(6, 6)

    def forward(self, x):
        for t in range(6):
            x = torch.tanh(self.f(x)) * (0.5 + 0.125 * t)
            if x.sum().item() > 1.0:
                break
        return x


def test_values_of_the_loop_counter_alone_come_from_a_table():
    model = Schedule().eval()
    xs = _loop_inputs(40)
    cm = dycomp.compile(model, (xs[0],), backend="onnx")
    body = onnx.helper.get_node_attr_value(_loop(cm), "body")
    ops = _all_ops(body)
    tables = [n for n in body.node if n.op_type == "Gather" and n.input[0].endswith("__table")]
    assert len(tables) == 1 and ops["Cast"] == 0, ops  # no int -> double -> float per step
    assert_matches_eager(model, xs, cm=cm)


def test_loop_with_a_return_stays_on_the_host():
    model = HostLoops(returns=True).eval()
    xs = _loop_inputs(40)
    cm = dycomp.compile(model, (xs[0],), backend="onnx")
    assert "while True" in cm.host_source
    outs = []
    assert_matches_eager(model, xs, cm=cm, outputs=outs)
    results = {o[1] == -1 for o in outs}
    assert results == {True, False}


# -- what the fused graphs leave out ---------------------------------------------------------
def _graphs(g):
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)


@pytest.mark.parametrize("name,method", [("act", "forward"), ("decoder", "forward"),
                                         ("multi_exit", "forward"), ("nested_if", "forward"),
                                         ("moe", "forward")])
def test_fused_graphs_hold_no_needless_nodes(name, method):
    """ONNX Runtime runs every node of a `Loop` body on every iteration: no node whose
    result nothing reads, no `Not` of a `Not`, no logic on a constant, no logic node
    twice on the same inputs, no node twice, no `Identity` in front of a value computed in
    the graph, no body node whose inputs no iteration changes, no `Reshape` of a
    comparison of 0-d values, no carried value the body only unsqueezes, no `Not` copied
    to be output twice, no initializer twice in one graph."""
    model, example = ZOO[name].make()
    cm = dycomp.compile(getattr(model, method), example, backend="onnx")
    (region,) = cm.graph.regions.values()
    constants = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t).tolist()
                 for n in all_nodes(region.onnx.graph) if n.op_type == "Constant"}
    for g in _graphs(region.onnx.graph):
        read = {o.name for o in g.output}
        for n in all_nodes(g):
            read.update(n.input)
        made = {o: n for n in g.node for o in n.output}
        consts = {o for o, n in made.items() if n.op_type == "Constant"}
        logic = [n for n in g.node if n.op_type in ("Not", "And", "Or")]
        for n in g.node:
            assert read.intersection(n.output), f"{n.op_type} {n.name}: result unread"
        for n in logic:
            assert not consts.intersection(n.input), f"{n.name}: logic on a constant"
            assert not (n.op_type == "Not" and made.get(n.input[0], n).op_type == "Not")
        assert len({(n.op_type, *n.input) for n in logic}) == len(logic)
        plain = [n for n in g.node if not any(a.type == onnx.AttributeProto.GRAPH
                                              for a in n.attribute)]
        same = Counter((n.op_type, *n.input, *(a.SerializeToString() for a in n.attribute
                                               if (a.name, a.i) != ("allowzero", 0)))
                       for n in plain)
        assert max(same.values(), default=1) == 1, "a node computed twice"
        inits = Counter((t.data_type, tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes())
                        for t in g.initializer)
        assert max(inits.values(), default=1) == 1, "an initializer twice"
        for n in g.node:
            if n.op_type != "Reshape" or constants.get(n.input[1]) != []:
                continue  # a Reshape to 0-d: of a comparison of 0-d values?
            src = made.get(n.input[0])
            kinds = {made[x].op_type if x in made else "outer" for x in src.input} if src else ()
            assert not (src and src.op_type in ("Less", "Greater", "Equal")
                        and "Reshape" in kinds and kinds <= {"Reshape", "Constant", "outer"}
                        ), f"{n.name}: Reshape of a 0-d comparison"
        for n in g.node:  # act's halting test decides only (in its loop, and on the
            # first iteration, before it): not reshaped
            readers = [m for m in g.node if n.output[0] in m.input]
            assert not (n.op_type == "Reshape" and constants.get(n.input[1]) == []
                        and readers and all(m.op_type == "Greater" for m in readers)
                        and name == "act"), f"{n.name}: Reshape of act's halting test"
        assert "dycomp_path" not in {o.name for o in g.output}  # runs untraced
    shapes, graphs = static_shapes(region.onnx), [region.onnx.graph]
    for g in graphs:  # no Reshape to the shape its input has (outside Loop bodies)
        graphs += [a.g for n in g.node if n.op_type == "If" for a in n.attribute]
        for n in g.node:
            if n.op_type == "Reshape" and n.input[1] in constants:
                assert shapes.get(n.input[0]) != tuple(constants[n.input[1]]), n.name
    for n in all_nodes(region.onnx.graph):  # no Loop body node that every iteration repeats
        if n.op_type == "Loop":
            body = onnx.helper.get_node_attr_value(n, "body")
            variant = {i.name for i in body.input}
            for m in body.node:
                if variant.intersection(m.input) or any(a.type == onnx.AttributeProto.GRAPH
                                                        for a in m.attribute):
                    variant.update(m.output)
                else:
                    assert m.op_type == "Constant", f"{m.op_type} {m.name} is loop-invariant"
            made_b = {o: m for m in body.node for o in m.output}
            copies = [made_b[o.name] for o in body.output if o.name in made_b
                      and made_b[o.name].op_type == "Identity"]
            assert not [c for c in copies if c.input[0] in made_b and made_b[c.input[0]]
                        .op_type == "Not"], "a Not output twice: negate the taken flags"
            for i in body.input[2:]:  # a GRU state is carried as the GRU takes it
                readers = [m for m in body.node if i.name in m.input]
                assert [m.op_type for m in readers] != ["Unsqueeze"], f"{i.name} unsqueezed"
        for o in g.output:
            n = made.get(o.name)
            if n is not None and n.op_type == "Identity" and n.input[0] in made:
                assert [x.name for x in g.output].count(n.input[0]), o.name


# -- fused subgraphs report the regions they ran ---------------------------------------------
@pytest.mark.parametrize("name,method", [("multi_exit", "forward"), ("act", "forward"),
                                         ("decoder", "attend"), ("policy_net", "forward"),
                                         ("moe", "forward")])
def test_fused_subgraph_reports_the_host_programs_path(name, method):
    """A fused subgraph lists the regions it ran inside (the `If` arms taken, every `Loop`
    iteration): input by input, the path of the host program it replaced."""
    mod = ZOO[name]
    model, example = mod.make()
    fused, host = (dycomp.compile(getattr(model, method), example, backend="onnx",
                                  check=False, fuse_branches=f) for f in (True, False))
    assert fused.graph.stats()["region_calls"] == 1 < host.graph.stats()["region_calls"]
    paths = set()
    for x in mod.sample_inputs(30):
        path = fused.run(*x, return_path=True)[1]
        assert path == host.run(*x, return_path=True)[1]
        paths.add(path)
    assert len(paths) >= 3


def test_drop_path_keeps_carried_values_the_body_reads():
    """`drop_path` drops a `Loop`-carried value only when nothing but its own next value
    reads it: `n` (read by the body's result) stays, the unread trace goes."""
    from onnx import TensorProto as T
    from onnx import helper as h

    from dycomp.runtime.onnx_paths import PATH_OUTPUT, drop_path

    def val(name, elem, shape=None):
        return h.make_tensor_value_info(name, elem, shape)

    body = h.make_graph(
        [h.make_node("Constant", [], ["one"], value=onnx.numpy_helper.from_array(
            np.array(1, np.int64))),
         h.make_node("Add", ["n", "one"], ["n2"]), h.make_node("Identity", ["c"], ["c2"]),
         h.make_node("Concat", ["p", "one1"], ["p2"], axis=0),
         h.make_node("Unsqueeze", ["one", "ax"], ["one1"]),
         h.make_node("Constant", [], ["ax"], value=onnx.numpy_helper.from_array(
             np.array([0], np.int64)))],
        "body", [val("i", T.INT64, []), val("c", T.BOOL, []), val("n", T.INT64, []),
                 val("p", T.INT64, [None])],
        [val("c2", T.BOOL, []), val("n2", T.INT64, []), val("p2", T.INT64, [None])])
    g = h.make_graph(
        [h.make_node("Loop", ["trips", "go", "n0", "p0"], ["n", "p"], body=body),
         h.make_node("Identity", ["p"], [PATH_OUTPUT])],
        "g", [val("trips", T.INT64, []), val("go", T.BOOL, []), val("n0", T.INT64, []),
              val("p0", T.INT64, [None])],
        [val("n", T.INT64, []), val(PATH_OUTPUT, T.INT64, [None])])
    m = drop_path(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    (loop,) = m.graph.node
    assert list(loop.input) == ["trips", "go", "n0"] and list(loop.output) == ["n"]
    body = loop.attribute[0].g
    assert [n.op_type for n in body.node] == ["Constant", "Add", "Identity"]
    assert [o.name for o in m.graph.output] == ["n"]
    onnx.checker.check_model(m)


def _reshape_model() -> onnx.ModelProto:
    """x: float[1, 4] reshaped to [1, 4] (nothing changes: in the graph, and in an `If`
    arm), to [4], to [1, -1], inside a `Loop` body, and as a graph output."""
    h = onnx.helper
    T = onnx.TensorProto

    def const(name, v):
        return h.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(
            np.array(v, np.int64), name))

    then = h.make_graph([h.make_node("Reshape", ["x", "s14"], ["t0"]),
                         h.make_node("Neg", ["t0"], ["t1"])], "then", [],
                        [h.make_tensor_value_info("t1", T.FLOAT, [1, 4])])
    other = h.make_graph([h.make_node("Identity", ["x"], ["e0"])], "else", [],
                         [h.make_tensor_value_info("e0", T.FLOAT, [1, 4])])
    body = h.make_graph([h.make_node("Identity", ["c"], ["c1"]),
                         h.make_node("Reshape", ["v", "s14"], ["v1"])], "body",
                        [h.make_tensor_value_info("i", T.INT64, []),
                         h.make_tensor_value_info("c", T.BOOL, []),
                         h.make_tensor_value_info("v", T.FLOAT, [1, 4])],
                        [h.make_tensor_value_info("c1", T.BOOL, []),
                         h.make_tensor_value_info("v1", T.FLOAT, [1, 4])])
    nodes = [const("s14", [1, 4]), const("s4", [4]), const("sm", [1, -1]), const("n", 2),
                    h.make_node("Constant", [], ["yes"], value=onnx.numpy_helper.from_array(
                        np.array(True), "yes")),
                    h.make_node("Reshape", ["x", "s14"], ["a"]),
                    h.make_node("Relu", ["a"], ["out_a"]),
                    h.make_node("Reshape", ["x", "s4"], ["out_b"]),
                    h.make_node("Reshape", ["x", "sm"], ["m"]),
                    h.make_node("Relu", ["m"], ["out_m"]),
                    h.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
                    h.make_node("Greater", ["total", "zero"], ["cond"]),
                    h.make_node("If", ["cond"], ["out_if"], then_branch=then, else_branch=other),
                    h.make_node("Loop", ["n", "yes", "x"], ["out_loop"], body=body),
                    h.make_node("Reshape", ["x", "s14"], ["out_same"])]
    outs = ["out_a", "out_b", "out_m", "out_if", "out_loop", "out_same"]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                     [h.make_tensor_value_info(o, T.FLOAT, None) for o in outs],
                     [onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_reshapes_to_the_shape_a_value_has_read_it_instead():
    """Only the two no-op `Reshape`s go (the graph's and the `If` arm's); a `Reshape` that
    changes the shape, has a -1, sits in a `Loop` body or is a graph output stays; the
    outputs do not change, on either side of the `If`."""
    from dycomp.runtime.onnx_executor import new_session

    before = _reshape_model()
    after = _reshape_model()
    assert drop_noop_reshapes(after) == 2
    ops = Counter(n.op_type for n in all_nodes(after.graph))
    assert ops["Reshape"] == Counter(n.op_type for n in all_nodes(before.graph))["Reshape"] - 2
    for x in (np.arange(4, dtype=np.float32).reshape(1, 4), -np.ones((1, 4), np.float32)):
        want = new_session(before.SerializeToString(), 1).run(None, {"x": x})
        got = new_session(after.SerializeToString(), 1).run(None, {"x": x})
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
