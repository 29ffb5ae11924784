"""Debug output: `DYCOMP_DEBUG=1` (info) or `DYCOMP_DEBUG=2` (debug) on the dycomp loggers."""

from __future__ import annotations

import logging
import os


def debug_level() -> int:
    """0 (off), 1 or 2, from the DYCOMP_DEBUG environment variable."""
    try:
        return max(0, int(os.environ.get("DYCOMP_DEBUG", "0") or 0))
    except ValueError:
        return 1


def configure() -> None:
    """Send dycomp's log records to stderr at the level DYCOMP_DEBUG asks for."""
    level = debug_level()
    if not level:
        return
    logger = logging.getLogger("dycomp")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("dycomp %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if level == 1 else logging.DEBUG)
