"""Paths labelled by their decisions (`exit 2`, `skipped 1,3 of 4`, `5 steps`), not by the
names of the regions run: a fused subgraph's path lists the regions inside it, which say
little to a reader. The path (region names in the order they ran) is matched against the
control outline of the source (`runtime/controlflow.py`) to recover which arm each branch
took and how many steps each loop made; display only."""

from __future__ import annotations

from collections import defaultdict

BUDGET = 200_000  # matching steps before giving up (the label is then the region names)


class _Budget(Exception):
    pass


def expand(nodes: list, fused: dict) -> list:
    """The outline with every call of a fused subgraph replaced by the outline it fused."""
    out = []
    for n in nodes:
        if n["kind"] == "call" and n.get("region") in fused:
            out += expand(fused[n["region"]].get("outline", []), fused)
            continue
        n = dict(n)
        for key in ("then", "orelse", "body"):
            if key in n:
                n[key] = expand(n[key], fused)
        out.append(n)
    return out


def path_label(outline: list, path: list) -> str:
    """A short label of the decisions `path` took through `outline`; the region names
    joined when the path does not match it."""
    events = _Matcher(outline, list(path)).run()
    if events is None:
        return " > ".join(path)
    return _label(events) or "one path"


class _Matcher:
    """Backtracking match of a region sequence against the outline: (pos, outcome,
    events) for each way a statement list can run; outcome next/break/continue/return."""

    def __init__(self, outline: list, path: list):
        self.outline, self.path, self.steps = outline, path, 0

    def run(self):
        try:
            for pos, outcome, events in self.seq(self.outline, 0, 0):
                if pos == len(self.path) and outcome in ("return", "next"):
                    return events
        except (_Budget, RecursionError):
            return None
        return None

    def seq(self, nodes, i, pos):
        self.steps += 1
        if self.steps > BUDGET:
            raise _Budget
        if i == len(nodes):
            yield pos, "next", ()
            return
        n = nodes[i]
        kind = n["kind"]
        if kind == "call":
            if pos < len(self.path) and self.path[pos] == n.get("region"):
                yield from self.seq(nodes, i + 1, pos + 1)
            return
        if kind in ("return", "break", "continue"):
            yield pos, kind, ()
            return
        heads = self.branch(n, pos) if kind == "if" else self.loop(n, pos, 0, ())
        for p, out, ev in heads:
            if out == "next":
                for p2, out2, ev2 in self.seq(nodes, i + 1, p):
                    yield p2, out2, ev + ev2
            else:
                yield p, out, ev

    def branch(self, n, pos):
        for arm in ("then", "orelse"):
            for p, out, ev in self.seq(n[arm], 0, pos):
                head = (("if", n, arm),)
                if out in ("return", "break") and not any(e[0] == "end" for e in ev):
                    ev = ev + (("end", n, out),)
                yield p, out, head + ev

    def loop(self, n, pos, count, prefix):
        counted = n.get("source", "").startswith("for ")
        for p, out, ev in self.seq(n["body"], 0, pos):
            steps = count + (p > pos)
            if out == "return":
                yield p, "return", prefix + ev + (("loop", n, steps),)
            elif out == "break":
                yield p, "next", prefix + ev + (("loop", n, steps),)
            elif p > pos:  # next / continue: another iteration, or (for) the loop ends
                yield from self.loop(n, p, steps, prefix + ev)
                if counted:
                    yield p, "next", prefix + ev + (("loop", n, steps),)
        if counted and count == 0:
            yield pos, "next", prefix + (("loop", n, 0),)


SWITCH_CASE = "options[index], case "  # `dycomp.ir.program.SWITCH_CASE`


def _label(events) -> str:
    ifs: dict = defaultdict(list)  # (line, source) -> [(node, arm taken)], in order
    switches: dict = defaultdict(list)  # line -> option taken, per switch run
    loops: dict = defaultdict(list)
    for e in events:
        node = e[1]
        key = (node.get("line", "?"), node.get("source", ""))
        if e[0] == "if" and key[1].startswith(SWITCH_CASE):
            _switch_event(switches[key[0]], node, e[2])
        elif e[0] == "if" and not _exits(node, "break"):  # a loop's exit test: its steps
            ifs[key].append((node, e[2]))
        elif e[0] == "loop":
            loops[key].append(e[2])
    parts = [_if_part(key, taken) for key, taken in ifs.items()]
    for line, options in switches.items():
        where = f" ({line})" if len(switches) > 1 else ""
        parts.append(f"option {','.join(options)}{where}")
    for key, counts in loops.items():
        where = f" ({key[0]})" if len(loops) > 1 else ""
        parts.append(f"{'+'.join(map(str, counts))} step{'s' * (counts != [1])}{where}")
    return ", ".join(parts)


def _switch_event(options: list, node: dict, arm: str) -> None:
    """`options[index]` lowered to `if index == 0: ... else: if index == 1: ...`: the
    option a run took is the case whose `then` ran, or the one after the last case."""
    case = node.get("source", "")[len(SWITCH_CASE):]
    if arm == "then":
        options.append(case)
    elif not any(n["kind"] == "if" and n.get("source", "").startswith(SWITCH_CASE)
                 for n in node["orelse"]) and case.isdigit():
        options.append(str(int(case) + 1))


def _if_part(key, taken: list) -> str:
    """`exit 2` (a chain of tests, each in the previous one's arm: where it stopped),
    `skipped 1,3 of 4` (tests with one arm that runs nothing) or `cond: yes,no`."""
    line, source = key
    node = taken[0][0]
    calls = {arm: _calls(node[arm]) for arm in ("then", "orelse")}
    skip = None if calls["then"] == calls["orelse"] else ("orelse" if calls["then"] else "then")
    if skip is not None and _chained(node, key, "then" if skip == "orelse" else "orelse"):
        return f"exit {len(taken)}" if taken[-1][1] == skip else "no early exit"
    if len(taken) > 1 and skip is not None:
        idx = [i + 1 for i, (_, arm) in enumerate(taken) if arm == skip]
        return f"skipped {_ranges(idx) or 'none'} of {len(taken)} ({line})"
    return f"{source or line}: " + ",".join("yes" if arm == "then" else "no" for _, arm in taken)


def _ranges(nums: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> '1-3,5,7,8' (runs of three or more as a range)."""
    out, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out += [f"{nums[i]}-{nums[j]}"] if j - i >= 2 else [str(n) for n in nums[i:j + 1]]
        i = j + 1
    return ",".join(out)


def _chained(node: dict, key: tuple, arm: str) -> bool:
    """Whether `arm` of `node` goes on to another test from the same line and source (an
    unrolled `for ...: if test: return`)."""
    return any(n["kind"] == "if" and (n.get("line", "?"), n.get("source", "")) == key
               for n in node[arm])


def _exits(node, kind: str) -> bool:
    return any(_has(node[arm], kind) for arm in ("then", "orelse"))


def _has(nodes: list, kind: str) -> bool:
    for n in nodes:
        if n["kind"] == kind:
            return True
        if n["kind"] == "if" and (_has(n["then"], kind) or _has(n["orelse"], kind)):
            return True
        if n["kind"] == "loop" and kind == "return" and _has(n["body"], kind):
            return True
    return False


def _calls(nodes: list) -> bool:
    return any(n["kind"] == "call" or any(_calls(n.get(k, [])) for k in
                                          ("then", "orelse", "body")) for n in nodes)
