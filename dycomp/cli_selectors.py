"""Command-line pieces for models with selectors (torch-free: `dycomp run` uses them).

`--selector NAME=V1,V2,...` declares a selector for `dycomp compile` and `dycomp bench`:
the values are split at top-level commas and each read as JSON (`0.5`, `true`, `"a,b"`),
else as a Python literal, else as a plain string; a list whose first item is a string is
a setter call
`[method, args]`, `[method, kwargs]` or `[method, args, kwargs]`, as in
`dycomp.compile(selectors=...)`. `dycomp run ART --budget-ms MS` runs the sub-network
`select(budget_ms)` picks from the artifact's stored latency table.
"""

from __future__ import annotations

import ast
import json
import math


def _usage(message: str):
    from dycomp.cli import UsageError

    return UsageError(message)


def split_top_level(text: str) -> list[str]:
    """`0.5,'a,b',[1, 2],{"d":1,"e":2}` -> ['0.5', "'a,b'", '[1, 2]', '{"d":1,"e":2}']:
    commas inside quotes, brackets, braces or parentheses do not split."""
    parts, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(text):
        if quote:
            quote = "" if c == quote and text[i - 1] != "\\" else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _value(name: str, text: str):
    """One declared value: JSON (`0.5`, `true`, `null`), else a Python literal (`True`,
    `'a'`), else the text itself; a list whose first item is a string is a setter call."""
    if not text:
        raise _usage(f"--selector {name}: an empty value; give NAME=V1,V2,... with no "
                     "empty item")
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
            break
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            continue
    else:
        value = text
    if isinstance(value, list) and value and isinstance(value[0], str):
        return tuple(value)  # a setter call
    if value is not None and not isinstance(value, (bool, int, float, str)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise _usage(f"--selector {name}: {text!r} is not an int, float, bool, str or None, "
                     'nor a setter call ["method", args]')
    return value


def parse_selector_flags(flags) -> dict:
    """{name: [values]} from `--selector NAME=V1,V2,...` flags (UsageError if malformed;
    what `dycomp.compile` would refuse is refused here)."""
    out: dict = {}
    for flag in flags:
        name, sep, values = flag.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise _usage(f"--selector takes NAME=V1,V2,... (NAME the keyword argument), got "
                         f"{flag!r}")
        if name in out:
            raise _usage(f"--selector {name} is given twice; list all its values in one flag")
        out[name] = [_value(name, v.strip()) for v in split_top_level(values)]
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
