"""report.html: one self-contained page, plots embedded as base64 PNGs (matplotlib)."""

from __future__ import annotations

import base64
import html
import io


def render(result, markdown_rows: list[dict]) -> str:
    figures = [("Latency per contender (median, 95 % bootstrap CI)", _contenders(result)),
               ("Latency per path (dycomp)", _paths(result)),
               ("Time per subgraph call (dycomp, host timers)", _subgraphs(result))]
    body = [f"<h1>dycomp bench: {html.escape(result.model)}</h1>",
            f"<p>{result.inputs} inputs x {result.runs} interleaved rounds, "
            f"{result.threads} threads for every contender. "
            + html.escape(", ".join(f"{k} {v}" for k, v in result.environment.items()))
            + "</p>", _table(markdown_rows)]
    for title, png in figures:
        if png:
            body.append(f"<h2>{html.escape(title)}</h2><img alt=\"{html.escape(title)}\" "
                        f"src=\"data:image/png;base64,{png}\">")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>dycomp bench"
            "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
            "collapse}td,th{border:1px solid #bbb;padding:4px 8px}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def _table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0]) if rows else ""
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values())
                    + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{cells}</table>"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(8, height))


def _contenders(result) -> str | None:
    timed = [c for c in result.contenders if c.stats]
    if not timed:
        return None
    fig, ax = _figure(0.5 + 0.45 * len(timed))
    med = [c.stats["median"] for c in timed]
    err = [[m - c.stats["ci_low"] for m, c in zip(med, timed)],
           [c.stats["ci_high"] - m for m, c in zip(med, timed)]]
    colors = ["tab:red" if c.wrong else "tab:blue" for c in timed]
    ax.barh([f"{c.name}{' (WRONG)' if c.wrong else ''}" for c in timed], med, xerr=err,
            color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("ms per call (red: answers differ from eager)")
    return _png(fig)


def _paths(result) -> str | None:
    """Each dycomp contender's own paths (backends name subgraphs differently)."""
    dy = [c for c in result.contenders if c.per_path]
    if not dy:
        return None
    labels, values = [], []
    for c in dy:
        top = sorted(c.per_path.items(), key=lambda kv: -kv[1]["n"])[:8]
        for path, st in top:
            labels.append(_unique(f"{c.name}: {_middle(path)} ({st['n'] // result.runs} "
                                  "inputs)", labels))
            values.append(st["median"])
    fig, ax = _figure(0.6 + 0.35 * len(labels))
    ax.barh(labels, values, color="tab:green")
    ax.invert_yaxis()
    ax.set_xlabel("median ms per call on this path (named by its decisions)")
    return _png(fig)


def _middle(text: str, n: int = 64) -> str:
    """`text` cut to `n` characters in the middle: decision labels differ at either end."""
    return text if len(text) <= n else f"{text[:n // 2 - 1]}...{text[-(n // 2 - 2):]}"


def _unique(label: str, taken: list) -> str:
    """A bar label not yet used (bars with one label would be drawn as one)."""
    k, out = 2, label
    while out in taken:
        out, k = f"{label} #{k}", k + 1
    return out


def _subgraphs(result) -> str | None:
    dy = [c for c in result.contenders if c.subgraph_us]
    if not dy:
        return None
    c = dy[0]
    items = sorted(c.subgraph_us.items(), key=lambda kv: -kv[1])[:20]
    fig, ax = _figure(0.6 + 0.3 * len(items))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:purple")
    ax.invert_yaxis()
    share = "" if c.host_share is None else f"; host program share {c.host_share:.0%}"
    ax.set_xlabel(f"{c.name}: mean us per subgraph call{share}")
    return _png(fig)
