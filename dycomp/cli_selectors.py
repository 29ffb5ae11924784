"""Command-line pieces for models with selectors (torch-free: `dycomp run` uses them).

`--selector NAME=V1,V2,...` declares a selector for `dycomp bench`: the values are
split at top-level commas and each read as JSON (`0.5`, `true`, `"a,b"`), else as a
plain string; a JSON list whose first item is a string is a setter call
`[method, args]`, `[method, kwargs]` or `[method, args, kwargs]`, as in
`dycomp.compile(selectors=...)`. `dycomp run ART --budget-ms MS` runs the sub-network
`select(budget_ms)` picks from the artifact's stored latency table.
"""

from __future__ import annotations

import json


def _usage(message: str):
    from dycomp.cli import UsageError

    return UsageError(message)


def split_top_level(text: str) -> list[str]:
    """`a,[b,c],{"d":1,"e":2}` -> ['a', '[b,c]', '{"d":1,"e":2}']: commas inside brackets,
    braces or double quotes do not split."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _value(text: str):
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, list) and value and isinstance(value[0], str):
        return tuple(value)  # a setter call
    return value


def parse_selector_flags(flags) -> dict:
    """{name: [values]} from `--selector NAME=V1,V2,...` flags (UsageError if malformed)."""
    out: dict = {}
    for flag in flags:
        name, sep, values = flag.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not values.strip():
            raise _usage(f"--selector {flag!r}: write NAME=V1,V2,... (e.g. "
                         "--selector width=0.25,0.5,1.0)")
        if name in out:
            raise _usage(f"--selector {name} is given twice; list all its values in one flag")
        out[name] = [_value(v) for v in split_top_level(values)]
        if any(v == "" for v in out[name]):
            raise _usage(f"--selector {flag!r}: an empty value (two commas in a row?)")
    from dycomp.errors import UnsupportedError
    from dycomp.selectors import parse

    try:
        parse(out)
    except UnsupportedError as e:
        raise _usage(f"--selector: {e}") from None
    return out


def budget_subnet(art, budget_ms: float, out):
    """The sub-network of `art` that `select(budget_ms)` picks (its artifact); prints which."""
    from dycomp.runtime.selectors import Selected

    if not isinstance(art, Selected):
        raise _usage("--budget-ms picks a sub-network by its measured latency, but this "
                     "artifact was compiled without selectors")
    if not art.latency:
        raise _usage("this artifact stores no latency table: measure its sub-networks with "
                     "`dycomp bench TARGET --selector ... --save-latency ART`, or choose one "
                     "with --arg NAME=VALUE")
    try:
        values = art.select(budget_ms)
    except ValueError as e:
        raise _usage(f"--budget-ms {budget_ms:g}: {e}") from None
    wanted = json.dumps(values, sort_keys=True)  # 1 and 1.0 differ
    key = next(k for k in art.subnets if json.dumps(art.values(k), sort_keys=True) == wanted)
    out.print(f"sub-network: {art.label(key)} ({art.params.get(key, '?')} params, "
              f"{art.latency[key]:.3f} ms measured; budget {budget_ms:g} ms)",
              markup=False, highlight=False, soft_wrap=True)
    return art.subnets[key]
