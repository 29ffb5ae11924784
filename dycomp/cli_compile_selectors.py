"""`dycomp compile --selector NAME=V1,V2,...`: a model with argument selectors from the
command line (`dycomp.compile(..., selectors=...)`), one sub-network per declared value,
saved as one artifact. The flags are read by `dycomp.cli_selectors` (shared with
`dycomp bench`); a setter call is spelled as a JSON list, `["set_width", [0.5]]`.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

import dycomp
from dycomp.cli import (
    CompileConfig,
    Stages,
    _disk_size,
    _human_size,
    _row,
    summary_head,
)
from dycomp.cli_selectors import parse_selector_flags
from dycomp.frontend.dyndims import parse_cli


def compile_selected(cfg: CompileConfig, model, examples: tuple, stage: Stages,
                     out: Console) -> None:
    """Compile (and self-check) one sub-network per declared combination, save them as
    one artifact, print the summary."""
    selectors = parse_selector_flags(cfg.selectors)
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
                            selectors=selectors, dynamic_dims=parse_cli(list(cfg.dynamic)),
                            **options)
    if cfg.output is not None:
        with stage(f"save {cfg.output}"):
            sm.save(cfg.output)
    times = (stage.seconds[compiling], sum(stage.seconds.values()))
    out.print(_summary(cfg, sm, examples, times))


def _summary(cfg: CompileConfig, sm, examples: tuple, times: tuple[float, float]) -> Table:
    table = summary_head(cfg, examples)
    _row(table, "backend", cfg.backend)
    for s in sm.selectors:
        _row(table, "selector", f"{s['name']} = {', '.join(map(repr, s['values']))}")
    for key, cm in sm.subnets.items():
        st = cm.graph.stats() if cm.graph is not None else cm.graph_stats
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
