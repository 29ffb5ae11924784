"""`dycomp bench` reports: results.json, results.csv, report.md and report.html."""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = ["contender", "verdict", "median_ms", "p90_ms", "p99_ms", "ci_low_ms",
           "ci_high_ms", "speedup_vs_eager", "compile_s", "artifact_kb", "rss_mb",
           "host_share"]


def rows(result) -> list[dict]:
    eager = next((c.stats.get("median") for c in result.contenders
                  if c.name == "eager" and c.stats), None)
    out = []
    for c in result.contenders:
        s = c.stats
        speed = eager / s["median"] if eager and s and (c.optimized or not c.wrong) else None
        out.append({"contender": c.name, "verdict": c.verdict,
                    "median_ms": s.get("median"), "p90_ms": s.get("p90"),
                    "p99_ms": s.get("p99"), "ci_low_ms": s.get("ci_low"),
                    "ci_high_ms": s.get("ci_high"), "speedup_vs_eager": speed,
                    "compile_s": c.compile_s if c.status == "ok" else None,
                    "artifact_kb": c.artifact_kb, "rss_mb": c.rss_mb,
                    "host_share": c.host_share})
    return out


def write(result, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    from dycomp.benchmark.html import render

    paths = {"json": out / "results.json", "csv": out / "results.csv",
             "md": out / "report.md", "html": out / "report.html"}
    data = result.to_dict()
    for c in data["contenders"]:
        c.pop("times_ms", None)
    paths["json"].write_text(json.dumps({**data, "rows": rows(result)}, indent=2))
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + list(result.environment))
        w.writeheader()
        for r in rows(result):
            w.writerow({**r, **result.environment})
    paths["md"].write_text(markdown(result))
    paths["html"].write_text(render(result, rows(result)))
    return paths


def _num(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(result) -> str:
    env = result.environment
    lines = [f"# dycomp bench: {result.model}", "",
             f"{result.inputs} inputs x {result.runs} interleaved rounds, batch as given, "
             f"{result.threads} threads for every contender; {env['cpu']} "
             f"({env['cores']} cores); torch {env['torch']}, onnxruntime "
             f"{env['onnxruntime']}, dycomp {env['dycomp']}.", "",
             "Speedups are shown only for contenders that answered every input like eager "
             "PyTorch; a contender that is fast but wrong is flagged, not ranked.", "",
             "| contender | result | median ms | 95 % CI | p90 ms | p99 ms | vs eager | "
             "compile s | artifact KB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows(result):
        ci = (f"{_num(r['ci_low_ms'])}-{_num(r['ci_high_ms'])}"
              if r["ci_low_ms"] is not None else "-")
        speed = "-" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x"
        lines.append(f"| {r['contender']} | {r['verdict']} | {_num(r['median_ms'])} | {ci} | "
                     f"{_num(r['p90_ms'])} | {_num(r['p99_ms'])} | {speed} | "
                     f"{_num(r['compile_s'], '.2f')} | {_num(r['artifact_kb'], '.0f')} |")
    if result.paths:
        lines += ["", "## Paths (dycomp)", "", "| path | inputs | " + " | ".join(
            f"{c.name} median ms" for c in result.contenders if c.per_path) + " |",
            "|---|---|" + "---|" * sum(bool(c.per_path) for c in result.contenders)]
        for path, n in sorted(result.paths.items(), key=lambda kv: -kv[1]):
            cells = [_num(c.per_path.get(path, {}).get("median"))
                     for c in result.contenders if c.per_path]
            lines.append(f"| {path} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
