"""`dycomp compile --selector NAME=V1,V2,...`: a model with argument selectors from the
command line (`dycomp.compile(..., selectors=...)`), one sub-network per declared value,
saved as one artifact. Setter selectors (`net.set_active_subnet(...)`) need the Python
API: a setter call is not a value a flag can spell unambiguously.
"""

from __future__ import annotations

import ast
import json

from rich.console import Console
from rich.table import Table

import dycomp
from dycomp.cli import (
    CompileConfig,
    Stages,
    UsageError,
    _describe_inputs,
    _disk_size,
    _human_size,
    _row,
)


def parse_selectors(texts: tuple[str, ...]) -> dict[str, list]:
    """{name: values} from `--selector NAME=V1,V2,...` flags; UsageError (exit 2) for text
    that declares nothing, twice, or values that are not int, float, bool, str or None."""
    out: dict[str, list] = {}
    for text in texts:
        name, sep, rest = text.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise UsageError(f"--selector takes NAME=V1,V2,... (NAME the keyword argument), "
                             f"got {text!r}")
        if name in out:
            raise UsageError(f"--selector {name} is given twice; list all its values in one")
        values = [_value(name, v.strip()) for v in _split(rest)]
        if len({json.dumps(v) for v in values}) < len(values):
            raise UsageError(f"--selector {text!r} declares a value twice")
        out[name] = values
    from dycomp.errors import UnsupportedError
    from dycomp.selectors import parse

    try:
        parse(out)  # what dycomp.compile would refuse, refused as a usage error
    except UnsupportedError as e:
        raise UsageError(f"--selector: {e}") from None
    return out


def _split(text: str) -> list[str]:
    """`0.5,'a,b',[1, 2]` -> ['0.5', "'a,b'", '[1, 2]']: commas inside quotes or
    brackets do not split."""
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
    `'a'`), else the text itself as a string."""
    if not text:
        raise UsageError(f"--selector {name}: an empty value; give NAME=V1,V2,... with no "
                         f"empty item")
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
            break
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            continue
    else:
        value = text
    if value is not None and not isinstance(value, (bool, int, float, str)) or (
            isinstance(value, float) and (value != value or abs(value) == float("inf"))):
        raise UsageError(f"--selector {name}: {text!r} is not an int, float, bool, str or "
                         f"None (setter selectors need the Python API)")
    return value


def compile_selected(cfg: CompileConfig, model, examples: tuple, stage: Stages,
                     out: Console) -> None:
    """Compile (and self-check) one sub-network per declared combination, save them as
    one artifact, print the summary."""
    selectors = parse_selectors(cfg.selectors)
    n = 1
    for values in selectors.values():
        n *= len(values)
    options = {}
    if cfg.backend == "tvm":
        options["strict"] = cfg.strict
        if cfg.tune_trials is not None:
            options["tune"] = dycomp.TuneConfig(trials=cfg.tune_trials, db=cfg.tune_db)
    compiling = (f"capture + compile ({cfg.backend}) {n} sub-networks"
                 + (", each checked against eager PyTorch" if cfg.check else ""))
    with stage(compiling, spinner="tune" not in options):
        sm = dycomp.compile(model, examples, method=cfg.method, backend=cfg.backend,
                            check=cfg.check, threads=cfg.threads, optimize=cfg.optimize,
                            selectors=selectors, **options)
    if cfg.output is not None:
        with stage(f"save {cfg.output}"):
            sm.save(cfg.output)
    times = (stage.seconds[compiling], sum(stage.seconds.values()))
    out.print(_summary(cfg, sm, examples, times))


def _summary(cfg: CompileConfig, sm, examples: tuple, times: tuple[float, float]) -> Table:
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    _row(table, "target", f"{cfg.target} ({cfg.method})")
    _row(table, "inputs", _describe_inputs(examples) + (
        " (from --input)" if cfg.inputs else " (from the factory)"))
    _row(table, "backend", cfg.backend)
    for s in sm.selectors:
        _row(table, "selector", f"{s['name']} = {', '.join(map(repr, s['values']))}")
    for key, cm in sm.subnets.items():
        st = cm.graph.stats()
        check = "" if cm.check is None else f"; check: {cm.check.summary()}"
        _row(table, "sub-network", f"{sm.label(key)}: {sm.params.get(key, 0)} params, "
             f"{st['regions']} subgraphs, {st['ops']} ops{check}")
    counted = [getattr(cm.check, "inputs", None) for cm in sm.subnets.values()]
    _row(table, "check", "skipped" if not cfg.check else "every sub-network matched eager"
         + ("" if None in counted else f" ({sum(counted)} inputs in all)"))
    _row(table, "compile time", f"{times[0]:.2f} s (all stages {times[1]:.2f} s)")
    _row(table, "artifact", "not saved (no -o)" if cfg.output is None else
         f"{cfg.output} ({_human_size(_disk_size(cfg.output))}; one artifact, the weights "
         f"stored once)")
    return table
