"""Compile the real-world corpus unchanged and compare it with eager PyTorch.

    python benchmarks/corpus/run.py --src DIR [--backends torch,onnx,tvm] [--peers compile]
                                    [--inputs N] [--json OUT] [model ...]

Every module of `benchmarks/corpus/` other than `common.py` and `run.py` that defines
`build` is an adapter (see common.py for the contract). Per model and backend it prints:
the paths eager took (distinct `path_of` values), whether dycomp compiles it (else the
error's first line), how many of the N inputs match eager (`Case.compare`), median
latencies (eager, compiled, and `torch.compile` with `--peers compile`, measured
interleaved in the same window), speedups and compile times. Threads are pinned to 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import dycomp  # noqa: E402
from dycomp.check import compare as default_compare  # noqa: E402

log = logging.getLogger("dycomp.corpus")
THREADS = 2
HERE = Path(__file__).resolve().parent


def discover() -> dict:
    """The adapter modules, by their NAME (and file stem)."""
    found = {}
    for f in sorted(HERE.glob("*.py")):
        if f.stem in ("common", "run", "__init__"):
            continue
        mod = importlib.import_module(f"benchmarks.corpus.{f.stem}")
        if callable(getattr(mod, "build", None)):
            found[getattr(mod, "NAME", f.stem)] = mod
    return found


def select(adapters: dict, names: list[str]) -> list:
    if not names:
        return list(adapters.values())
    by_stem = {m.__name__.rsplit(".", 1)[1]: m for m in adapters.values()}
    out = []
    for n in names:
        mod = adapters.get(n) or by_stem.get(n.replace("-", "_"))
        if mod is None:
            sys.exit(f"unknown model {n!r}; adapters: {', '.join(sorted(adapters))}")
        out.append(mod)
    return out


def fetch_hint(mod, src: Path) -> str:
    dest = src / mod.DIR
    return (f"{dest} not found. Fetch it: git clone https://github.com/{mod.REPO} {dest} && "
            f"git -C {dest} checkout {mod.COMMIT}  (see benchmarks/corpus/README.md)")


def first_line(e: BaseException) -> str:
    """The error's first line (and the next one when the first only announces it)."""
    text = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    head = " ".join(text[:2]) if text and text[0].endswith(":") else (text[0] if text else "")
    return f"{type(e).__name__}: {head}"


def _call(case, fn, i, args, kwargs):
    if case.reseed is not None:
        case.reseed(i)
    with torch.no_grad():
        return fn(*args, **kwargs)


def run_eager(case, n: int) -> tuple[list, list, set]:
    inputs, expected, paths = [], [], set()
    for i in range(n):
        args, kwargs = case.make_input(i)
        out = _call(case, case.fn, i, args, kwargs)
        inputs.append((args, kwargs))
        expected.append(out)
        paths.add(case.path_of(out))
    return inputs, expected, paths


def compile_backend(case, backend: str, inputs) -> dict:
    """Compile with the first input as the example; time it."""
    args, kwargs = inputs[0]
    if case.reseed is not None:
        case.reseed(0)
    t0 = time.perf_counter()
    try:
        cm = dycomp.compile(case.fn, args, example_kwargs=kwargs, backend=backend,
                            threads=THREADS, check=False)
    except Exception as e:  # noqa: BLE001 - reported, and the run goes on
        log.debug("compile failed:\n%s", traceback.format_exc())
        return {"compiles": False, "error": first_line(e)}
    return {"compiles": True, "compile_s": time.perf_counter() - t0, "fn": cm}


def check_outputs(case, fn, inputs, expected) -> dict:
    cmp = case.compare or (lambda e, a: default_compare(e, a))
    ok, first = 0, None
    for i, ((args, kwargs), exp) in enumerate(zip(inputs, expected)):
        try:
            diff = cmp(exp, _call(case, fn, i, args, kwargs))
        except Exception as e:  # noqa: BLE001
            diff = first_line(e)
        if diff is None:
            ok += 1
        elif first is None:
            first = f"input {i}: {diff}"
    return {"correct": ok, "first_mismatch": first}


def inductor_on_cpu(gm, example_inputs):
    """Inductor on Dynamo's graph without its `.cuda()` calls: Dynamo records the real
    `Tensor.cuda`, not the adapters' CPU shim (`common.shim_cuda`), so code with
    hard-coded `.cuda()` fails under the default backend on a CPU-only torch."""
    from torch._inductor.compile_fx import compile_fx

    for node in list(gm.graph.nodes):
        if node.op == "call_method" and node.target == "cuda":
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()
    return compile_fx(gm, example_inputs)


def peer_compile(case, inputs) -> dict:
    """torch.compile of the same callable; its first call's time is its compile time.
    Where the default backend fails on CUDA, once more with `inductor_on_cpu` (noted)."""
    args, kwargs = inputs[0]
    note = None
    for backend in ("inductor", inductor_on_cpu):
        torch._dynamo.reset()
        fn = torch.compile(case.fn, backend=backend)
        t0 = time.perf_counter()
        try:
            _call(case, fn, 0, args, kwargs)
        except Exception as e:  # noqa: BLE001
            error = first_line(e)
            if backend != "inductor" or "CUDA" not in error:
                return {"compiles": False, "error": error, "note": note}
            note = "default backend: " + error + "; ran with .cuda() calls dropped"
            continue
        return {"compiles": True, "compile_s": time.perf_counter() - t0, "fn": fn, "note": note}


def time_interleaved(case, fns: dict, inputs, n_inputs: int, reps: int,
                     blocks: bool = False) -> dict:
    """Median seconds per call of each callable, interleaved call by call, or with
    `blocks` each over the inputs in turn, the order rotating per round: torch.compile's
    OpenMP workers spin after its kernels and slow whatever runs next call by call
    (universal-transformer, onnx: 0.64 ms alone, 5.5 ms interleaved)."""
    samples = {k: [] for k in fns}
    sel = inputs[:n_inputs]
    for fn in fns.values():  # warm-up
        for i, (args, kwargs) in enumerate(sel[:2]):
            _call(case, fn, i, args, kwargs)
    order = list(fns.items())
    for _ in range(reps):
        if blocks:
            order = order[1:] + order[:1]
            calls = [(i, a, k, fn) for k, fn in order for i, a in enumerate(sel)]
        else:
            calls = [(i, a, k, fn) for i, a in enumerate(sel) for k, fn in order]
        for i, (args, kwargs), k, fn in calls:
            if case.reseed is not None:
                case.reseed(i)
            with torch.no_grad():
                t0 = time.perf_counter()
                fn(*args, **kwargs)
                samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def run_model(mod, src: Path, backends: list[str], peers: list[str], n: int | None,
              timing: tuple[int, int, bool], console: Console) -> dict:
    name = getattr(mod, "NAME", mod.__name__)
    res = {"model": name, "repo": f"{mod.REPO}@{mod.COMMIT[:8]}"}
    if not (src / mod.DIR).is_dir():
        res["error"] = fetch_hint(mod, src)
        console.print(f"[yellow]{name}[/]: {res['error']}")
        return res
    try:
        case = mod.build(src)
    except Exception as e:  # noqa: BLE001
        res["error"] = "build failed: " + first_line(e)
        console.print(f"[red]{name}[/]: {res['error']}")
        return res
    n = n or getattr(mod, "N_INPUTS", 100)
    for note in case.notes:
        console.print(f"  {name}: {note}")
    inputs, expected, paths = run_eager(case, n)
    res.update(inputs=n, paths=len(paths), notes=list(case.notes), backends={})
    fns = {"eager": case.fn}
    for b in backends:
        console.print(f"  {name}: compiling with backend {b} ...")
        r = compile_backend(case, b, inputs)
        if r["compiles"]:
            r.update(check_outputs(case, r["fn"], inputs, expected))
            fns[b] = r.pop("fn")
        res["backends"][b] = r
    if "compile" in peers:
        r = peer_compile(case, inputs)
        if r.get("note"):
            console.print(f"  {name}: torch.compile: {r['note']}")
        if r["compiles"]:
            r.update(check_outputs(case, r["fn"], inputs, expected))
            fns["torch.compile"] = r.pop("fn")
        res["peer"] = r
    lat = time_interleaved(case, fns, inputs, *timing)
    res["eager_ms"] = lat["eager"] * 1e3
    for b, r in res["backends"].items():
        if b in lat:
            r["ms"] = lat[b] * 1e3
            r["speedup_eager"] = lat["eager"] / lat[b]
            if "torch.compile" in lat:
                r["speedup_compile"] = lat["torch.compile"] / lat[b]
    if "torch.compile" in lat:
        res["peer"]["ms"] = lat["torch.compile"] * 1e3
        res["peer"]["speedup_eager"] = lat["eager"] / lat["torch.compile"]
    return res


def _fmt(v, spec=".2f", suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def table(results: list[dict], backends: list[str]) -> Table:
    t = Table(title="dycomp on the real-world corpus (2 threads)")
    for col in ("model", "backend", "paths", "compiles", "correct", "eager ms", "ms",
                "vs eager", "vs torch.compile", "compile s"):
        t.add_column(col, overflow="fold")
    for r in results:
        if "error" in r:
            t.add_row(r["model"], "-", "-", r["error"], *["-"] * 6)
            continue
        rows = list(r["backends"].items())
        if "peer" in r:
            rows.append(("torch.compile", r["peer"]))
        for b, x in rows:
            comp = "yes" if x["compiles"] else f"no: {x['error']}"
            correct = (f"{x['correct']}/{r['inputs']}" if "correct" in x else "-")
            if x.get("first_mismatch"):
                correct += f" ({x['first_mismatch']})"
            t.add_row(r["model"], b, str(r["paths"]), comp, correct, _fmt(r["eager_ms"]),
                      _fmt(x.get("ms")), _fmt(x.get("speedup_eager"), ".2f", "x"),
                      _fmt(x.get("speedup_compile"), ".2f", "x"), _fmt(x.get("compile_s"), ".1f"))
    for b in backends:
        g = geomean([r["backends"][b].get("speedup_eager") for r in results
                     if b in r.get("backends", {})])
        gc = geomean([r["backends"][b].get("speedup_compile") for r in results
                      if b in r.get("backends", {})])
        t.add_row("geomean", b, "", "", "", "", "", _fmt(g, ".2f", "x"), _fmt(gc, ".2f", "x"), "")
    return t


def geomean(xs) -> float | None:
    xs = [x for x in xs if x]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def _run_isolated(mod, argv: list[str], names: list[str], script: str = __file__) -> dict:
    """Run one adapter in a fresh Python process (each repository imports its own
    `models` / `transformers` packages) and read its result back: `script` run with
    `argv` less the model names, plus `--quiet --json FILE MODEL`, writes a list of one
    result."""
    stem = mod.__name__.rsplit(".", 1)[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        rest, skip = [], False
        for x in argv:  # the options, without the model names and --json
            if skip:
                skip = False
            elif x == "--json":
                skip = True
            elif not x.startswith("--json=") and x not in names:
                rest.append(x)
        proc = subprocess.run([sys.executable, script, *rest, "--quiet", "--json", str(out),
                               stem], check=False)
        if proc.returncode or not out.exists():
            return {"model": getattr(mod, "NAME", stem),
                    "error": f"its process exited with status {proc.returncode}"}
        return json.loads(out.read_text())[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True, help="folder holding the repositories")
    p.add_argument("--backends", default="torch,onnx")
    p.add_argument("--peers", default="", help="'compile': also torch.compile")
    p.add_argument("--inputs", type=int, default=None, help="inputs compared (default: adapter)")
    p.add_argument("--time-inputs", type=int, default=10, help="inputs timed")
    p.add_argument("--reps", type=int, default=3, help="timing rounds over those inputs")
    p.add_argument("--blocks", action="store_true",
                   help="time each contender over the inputs as a block, rounds rotating the "
                        "order (default: call by call)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quiet", action="store_true", help="no table (one model per process)")
    p.add_argument("models", nargs="*")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(THREADS)
    console = Console(width=200)
    backends = [b for b in a.backends.split(",") if b]
    peers = [x for x in a.peers.split(",") if x]
    mods = select(discover(), a.models)
    if len(mods) > 1:  # repositories reuse package names (`models`, `transformers`)
        results = [_run_isolated(m, argv if argv is not None else sys.argv[1:], a.models)
                   for m in mods]
    else:
        timing = (a.time_inputs, a.reps, a.blocks)
        results = [run_model(m, a.src, backends, peers, a.inputs, timing,
                             console) for m in mods]
    if not a.quiet:
        console.print(table(results, backends))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
