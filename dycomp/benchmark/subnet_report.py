"""Reports of `dycomp bench` on a model with selectors: the latency/accuracy plot (PNG,
matplotlib Agg), results.json, results.csv, report.md and report.html (plot embedded)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

COLUMNS = ["sub-network", "params", "eager ms", "dycomp ms", "speedup", "matches eager",
           "eager top-1", "dycomp top-1"]


def rows(result) -> list[dict]:
    """One dict per sub-network, keyed by COLUMNS (the accuracy columns given labels)."""
    out = []
    for r in result.rows:
        row = {"sub-network": r.label, "params": r.params, "eager ms": r.eager_ms,
               "dycomp ms": r.dycomp_ms, "speedup": r.speedup,
               "matches eager": f"{1 - r.wrong:.0%} of inputs"}
        if result.has_accuracy:
            row.update({"eager top-1": r.eager_acc, "dycomp top-1": r.dycomp_acc})
        out.append(row)
    return out


def plot_png(result) -> bytes:
    """One labelled point per sub-network: dycomp's median latency against its top-1
    accuracy, or against its parameters without labels (eager's as grey crosses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    accuracy = result.has_accuracy
    ys = [100 * r.dycomp_acc if accuracy else r.params for r in result.rows]
    xs = [r.dycomp_ms for r in result.rows]
    ax.plot(*zip(*sorted(zip(xs, ys))), "o-", color="tab:blue",
            label=f"dycomp ({result.backend})")
    ax.plot([r.eager_ms for r in result.rows],
            [100 * r.eager_acc if accuracy else r.params for r in result.rows],
            "x", color="grey", label="eager PyTorch")
    for x, y, r in zip(xs, ys, result.rows):
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    spread = [x for x in xs + [r.eager_ms for r in result.rows] if x > 0]
    if spread and max(spread) > 20 * min(spread):  # a noisy outlier squashes the rest
        ax.set_xscale("log")
    ax.set_xlabel("median latency per call (ms)")
    ax.set_ylabel("top-1 accuracy (%)" if accuracy else "parameters")
    ax.margins(x=0.15, y=0.1)  # room for the labels
    ax.set_title(f"{result.model}: {len(result.rows)} sub-networks, {result.threads} "
                 f"thread{'s' * (result.threads != 1)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write(result, out: Path, plot: bytes | None = None) -> dict[str, Path]:
    """results.json, results.csv, report.md and report.html (with `plot`, or a new one)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv",
             "md": out / "report.md", "html": out / "report.html"}
    table = rows(result)
    paths["json"].write_text(json.dumps({**result.to_dict(), "table": table}, indent=2,
                                        default=str))
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]) + list(result.environment))
        w.writeheader()
        for r in table:
            w.writerow({**r, **result.environment})
    paths["md"].write_text(markdown(result, table))
    png = base64.b64encode(plot or plot_png(result)).decode("ascii")
    paths["html"].write_text(_html(result, table, png))
    return paths


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _header(result) -> str:
    env = result.environment
    return (f"{result.inputs} inputs x {result.runs} interleaved rounds, {result.threads} "
            f"threads; dycomp backend {result.backend}; {env['cpu']} ({env['cores']} cores); "
            f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, dycomp {env['dycomp']}. "
            "Eager runs each sub-network configured the same way (argument passed, setter "
            "called).")


def markdown(result, table: list[dict]) -> str:
    lines = [f"# dycomp bench: {result.model}, one row per sub-network", "", _header(result),
             "", "| " + " | ".join(table[0]) + " |", "|---" * len(table[0]) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in r.values()) + " |" for r in table]
    return "\n".join(lines) + "\n"


def _html(result, table: list[dict], png: str) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in table[0])
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values())
                    + "</tr>" for r in table)
    title = "Latency and accuracy per sub-network" if result.has_accuracy else (
        "Latency and size per sub-network")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>dycomp bench</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:4px 8px}</style></head><body>"
            f"<h1>dycomp bench: {html.escape(result.model)}</h1>"
            f"<p>{html.escape(_header(result))}</p><table><tr>{head}</tr>{cells}</table>"
            f"<h2>{title}</h2><img alt=\"{title}\" src=\"data:image/png;base64,{png}\">"
            "</body></html>\n")
