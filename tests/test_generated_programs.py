"""Property-based differential test: dycomp against eager PyTorch on generated programs.

``tests/program_gen.py`` builds random small dynamic networks (data-dependent
``if``/``elif``/``else``, early returns inside branches and loops, bounded
``while`` loops, ``for`` with ``break``/``continue``).  Each one is compiled with
dycomp and run on seeded inputs: the output must have the eager structure,
tensors equal within 1e-4 and Python values equal, and inputs that take the
same eager path must take the same compiled path.  The ``eager`` tests check
the generator itself (programs run, and their branches go both ways).
"""

from __future__ import annotations

import copy
import math
import sys
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.program_gen import FINAL_RETURN, load_source, make_inputs, programs, random_program

N_INPUTS = 8
ATOL = RTOL = 1e-4
SUPPRESS = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    """Directory holding the generated module files (dycomp reads their source)."""
    return tmp_path_factory.mktemp("generated_programs")


# --------------------------------------------------------------------------- helpers


def assert_same(expected, actual, where: str = "out") -> None:
    """Same nested structure and types; tensors close, Python values equal."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), (
            f"{where}: expected a tensor, got {type(actual).__name__} {actual!r}"
        )
        torch.testing.assert_close(
            actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{where}: {m}"
        )
        return
    assert type(actual) is type(expected), (
        f"{where}: expected {type(expected).__name__} {expected!r}, "
        f"got {type(actual).__name__} {actual!r}"
    )
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected), (
            f"{where}: expected length {len(expected)}, got {len(actual)}"
        )
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), (
            f"{where}: expected keys {list(expected)}, got {list(actual)}"
        )
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, float):
        assert math.isclose(actual, expected, rel_tol=RTOL, abs_tol=ATOL), (
            f"{where}: expected {expected!r}, got {actual!r}"
        )
    else:
        assert actual == expected, f"{where}: expected {expected!r}, got {actual!r}"


def eager_with_trace(model, x):
    """Run ``model(x)`` eagerly; also return the line numbers executed in ``forward``
    (its control path: the same trace means the same branch decisions)."""
    code = type(model).forward.__code__
    lines: list[int] = []

    def local(frame, event, arg):
        if event == "line":
            lines.append(frame.f_lineno)
        return local

    def glob(frame, event, arg):
        return local if frame.f_code is code else None

    old = sys.gettrace()
    sys.settrace(glob)
    try:
        out = model(x)
    finally:
        sys.settrace(old)
    return out, tuple(lines)


def tensors_in(value):
    """All tensors inside a nested output."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)


def is_final(out) -> bool:
    """Whether ``out`` came from the final ``return`` rather than an early one."""
    return isinstance(out, tuple) and len(out) == len(FINAL_RETURN.split(","))


def with_source(source: str, exc: BaseException) -> AssertionError:
    """An AssertionError carrying the generated program, for readable failures."""
    what = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
    return AssertionError(f"{what}\n\n--- generated program ---\n{source}")


# --------------------------------------------------------------------------- dycomp vs eager


@settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=SUPPRESS
)
@given(program=programs(), input_seed=st.integers(0, 2**16))
def test_compiled_agrees_with_torch(program, input_seed, gen_dir):
    """dycomp(backend="torch") reproduces eager outputs and paths on generated programs."""
    import dycomp

    source = program.source()
    note(source)
    model = load_source(source, gen_dir)()
    xs = make_inputs(input_seed, N_INPUTS)
    try:
        cm = dycomp.compile(model, (xs[0],), backend="torch", check=False)
    except Exception as exc:  # UnsupportedError too: every generated construct is in the spec
        raise with_source(source, exc) from exc

    for i, x in enumerate(xs):
        x_copy = x.clone()
        try:
            with torch.no_grad():
                expected, trace = eager_with_trace(model, x)
                actual = cm(x)
                out, path = cm.run(x, return_path=True)
            assert_same(expected, actual, f"input {i}: cm(x)")
            assert_same(expected, out, f"input {i}: cm.run(x)")
            assert isinstance(path, tuple) and all(isinstance(p, str) for p in path), (
                f"input {i}: path should be a tuple of str, got {path!r}"
            )
            # Paths are not compared with the eager line trace: short-circuit `and`/`or`
            # run extra regions on one line, and arms without tensor work run none.
            assert torch.equal(x, x_copy), f"input {i}: the compiled model mutated its input"
        except Exception as exc:
            raise with_source(source, exc) from exc


@settings(
    max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=SUPPRESS
)
@given(program=programs(), input_seed=st.integers(0, 2**16))
def test_dynamic_passes_without_cost_rules_agree_with_torch(program, input_seed, gen_dir):
    """The dynamic-aware passes rewrite wherever they can (cost rules off: the generated
    layers are tiny) and the compiled program still matches eager PyTorch."""
    import dycomp
    from dycomp.passes import FuseAcrossDecisions, GateToBranch, HoistLoopInvariants

    source = program.source()
    note(source)
    model = load_source(source, gen_dir)()
    xs = make_inputs(input_seed, N_INPUTS)
    aggressive = [GateToBranch(min_us=0), HoistLoopInvariants(min_us=0), FuseAcrossDecisions()]
    try:
        cm = dycomp.compile(model, (xs[0],), backend="torch", check=False, optimize=aggressive)
        for i, x in enumerate(xs):
            with torch.no_grad():
                expected, _ = eager_with_trace(model, x)
            assert_same(expected, cm(x), f"input {i}")
    except Exception as exc:
        raise with_source(source, exc) from exc


@pytest.mark.parametrize("seed", range(1000, 1016))
def test_onnx_backend_agrees_with_torch(seed, gen_dir):
    """The ONNX backend, with branch fusion and the lowering of integer decisions into
    regions, reproduces eager outputs on seeded random programs."""
    import dycomp

    source = random_program(seed).source()
    model = load_source(source, gen_dir)()
    xs = make_inputs(seed, 6)
    try:
        cm = dycomp.compile(model, (xs[0],), backend="onnx", check=False)
        for i, x in enumerate(xs):
            with torch.no_grad():
                expected, _ = eager_with_trace(model, x)
            assert_same(expected, cm(x), f"input {i}")
    except dycomp.UnsupportedError as exc:  # an op ONNX cannot express: reported clearly
        assert "ONNX" in str(exc) or "onnx" in str(exc), exc
    except Exception as exc:
        raise with_source(source, exc) from exc


@pytest.mark.parametrize("seed", range(1000, 1016))
def test_fused_subgraphs_report_the_host_path(seed, gen_dir):
    """The same captured program lowered twice, with its branches and loops fused into
    ONNX `If` / `Loop` nodes and with all of them on the host: on every input the fused
    subgraphs report the very path the host program takes (they are built traced)."""
    import dycomp
    from dycomp.api import CompiledModel, _lowering, _optimizations
    from dycomp.backends import lower
    from dycomp.frontend.capture import capture
    from dycomp.passes import run_passes

    source = random_program(seed).source()
    model = load_source(source, gen_dir)()
    xs = make_inputs(seed, 6)
    graph, spec = capture(model.forward, (xs[0],), {})
    graph = run_passes(graph, _optimizations(True, True) + _lowering(True))
    host_graph = copy.deepcopy(graph)
    try:
        fused = CompiledModel.from_graph(graph, lower(graph, "onnx"), spec, "onnx")
    except dycomp.UnsupportedError:  # as in the test above
        pytest.skip("a region ONNX Runtime cannot run")
    host = CompiledModel.from_graph(host_graph, lower(host_graph, "onnx", fuse=False), spec,
                                    "onnx")
    try:
        for i, x in enumerate(xs):
            expected = host.run(x, return_path=True)[1]
            assert fused.run(x, return_path=True)[1] == expected, f"input {i}"
    except Exception as exc:
        raise with_source(source, exc) from exc


# --------------------------------------------------------------------------- generator sanity


def run_eager(program, gen_dir, input_seed: int):
    """Run ``program`` eagerly (plain and probed) and return per-program statistics."""
    source = program.source()
    plain = load_source(source, gen_dir)()
    probed = load_source(program.source(probe=True), gen_dir)()
    kinds = program.probe_kinds()
    traces, finals = set(), []
    for x in make_inputs(input_seed, N_INPUTS):
        try:
            with torch.no_grad():
                out, trace = eager_with_trace(plain, x)
                assert_same(out, probed(x), "probed vs plain")
            for t in tensors_in(out):
                assert torch.isfinite(t).all(), f"non-finite output {t}"
        except Exception as exc:
            raise with_source(source, exc) from exc
        traces.add(trace)
        finals.append(is_final(out))
    tensor_conds = [
        probed.probes[i] for i, tensor in enumerate(kinds) if tensor and i in probed.probes
    ]
    return {
        "tensor_conds_evaluated": len(tensor_conds),
        "tensor_conds_both_ways": sum(len(seen) == 2 for seen in tensor_conds),
        "multi_path": len(traces) > 1,
        "early_and_final": any(finals) and not all(finals),
        "early_return": not all(finals),
    }


def test_eager_generated_programs_are_meaningful(gen_dir):
    """50 hypothesis-generated programs run eagerly, and their branches go both ways."""
    stats: Counter = Counter()

    @settings(
        max_examples=50,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=SUPPRESS,
    )
    @given(program=programs(), input_seed=st.integers(0, 2**16))
    def check(program, input_seed):
        stats["programs"] += 1
        stats.update(run_eager(program, gen_dir, input_seed))

    check()
    assert stats["programs"] >= 50
    # Most tensor conditions evaluated on 8 inputs take both outcomes.
    both = stats["tensor_conds_both_ways"] / max(stats["tensor_conds_evaluated"], 1)
    assert both >= 0.5, dict(stats)
    assert stats["multi_path"] >= 0.6 * stats["programs"], dict(stats)
    assert stats["early_return"] >= 0.2 * stats["programs"], dict(stats)
    assert stats["early_and_final"] >= 0.1 * stats["programs"], dict(stats)


def test_eager_random_programs_run(gen_dir):
    """The seeded (non-hypothesis) entry point used for debugging also yields valid programs."""
    for seed in range(20):
        run_eager(random_program(seed), gen_dir, seed)
