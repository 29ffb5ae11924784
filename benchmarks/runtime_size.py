"""Installed size of the runtime alone against the full install.

    python benchmarks/runtime_size.py

Builds the `dycomp-runtime` wheel, installs it with numpy, onnx and onnxruntime (this
environment's versions) into a fresh venv, as `tests/test_runtime_alone.py` does, and
prints the size of that venv's site-packages (by distribution, and without pip and
setuptools, which every venv has) beside this environment's site-packages.
"""

from __future__ import annotations

import logging
import sys
import sysconfig
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_runtime_alone import make_runtime_venv  # noqa: E402

log = logging.getLogger("runtime_size")
TOOLS = ("pip", "setuptools", "_distutils_hack", "pkg_resources")


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (links not followed)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def by_top_level(site_dir: Path) -> dict[str, int]:
    """Bytes per top-level entry of a site-packages folder (dist-info folded into its name)."""
    sizes: dict[str, int] = {}
    for entry in site_dir.iterdir():
        name = entry.name.split("-")[0].lower().removesuffix(".libs")
        n = tree_bytes(entry) if entry.is_dir() else entry.lstat().st_size
        sizes[name] = sizes.get(name, 0) + n
    return sizes


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        python = make_runtime_venv(Path(tmp))
        (alone,) = python.parent.parent.glob("lib/python*/site-packages")
        sizes = by_top_level(alone)
        total = sum(sizes.values())
        tools = sum(n for k, n in sizes.items() if k in TOOLS)
        full_dir = Path(sysconfig.get_paths()["purelib"])
        full = tree_bytes(full_dir)
    mb = 1 / 2**20
    for name, n in sorted(sizes.items(), key=lambda kv: -kv[1])[:8]:
        log.info("  %-20s %7.1f MiB", name, n * mb)
    log.info("runtime-only venv site-packages: %.0f MiB (%.0f MiB without pip/setuptools)",
             total * mb, (total - tools) * mb)
    log.info("full install (%s): %.0f MiB", full_dir, full * mb)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
