"""Host-program cost per call: the synthesized host code alone, regions replayed.

    python benchmarks/host_program_cost.py [zoo example ...]

Per example (compiled for ONNX Runtime with branches left on the host, so the host
program does all the dispatching), one call records every region's outputs; then the
host program runs again and again against an executor that hands those outputs back
in order, so the time measured is the host program's own (its Python statements, the
region-call protocol), not ONNX Runtime's. Prints the best-of-5 microseconds per call.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from examples.zoo import ZOO  # noqa: E402

DEFAULT = ("multi_exit", "nested_if", "moe", "act", "decoder")


class Replay:
    """Hands back recorded region outputs, in call order."""

    def __init__(self, outputs: list):
        self.outputs, self.k = outputs, 0

    def __call__(self, region, *args):
        out = self.outputs[self.k]
        self.k += 1
        return out


def host_us(name: str, number: int = 2000) -> tuple[float, int]:
    model, example = ZOO[name].make()
    cm = dycomp.compile(model, example, backend="onnx", check=False, fuse_branches=False)
    flat = cm.spec.flatten(example, {}) if hasattr(cm.spec, "flatten") else None
    inputs = [x.numpy() for x in (flat or example)]
    real, recorded = cm.program.executor, []

    def record(region, *args):
        out = real(region, *args)
        recorded.append(out)
        return out

    with cm.program.using(record):
        cm.program.run(*inputs)
    replay = Replay(recorded)
    with cm.program.using(replay):
        def once():
            replay.k = 0
            cm.program.run(*inputs)
        best = min(timeit.repeat(once, number=number, repeat=5)) / number * 1e6
    return best, len(recorded)


def main(names) -> None:
    for name in names or DEFAULT:
        us, calls = host_us(name)
        print(f"{name:>12}: {us:7.2f} us per call of the host program ({calls} region calls)")


if __name__ == "__main__":
    main(sys.argv[1:])
