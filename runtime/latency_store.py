"""Store measured sub-network latencies in a saved model with selectors (no torch).

`Selected.select(budget_ms)` chooses from the `latency_ms` of each sub-network entry of
the artifact's top `manifest.json`. `dycomp bench --save-latency` (or a deployment
machine, after `rt.measure(x)`) writes its medians there with `store_latency`. Only the
top manifest changes: the files it lists keep their sha256. A signature covers the
manifest's bytes, so an existing `signature.json` no longer matches: it is re-made with
the private key given, else removed (a stale signature would fail every verification).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from dycomp.runtime import trust
from dycomp.runtime.artifact import MANIFEST, manifest_bytes, sign
from dycomp.runtime.errors import ArtifactError

log = logging.getLogger(__name__)


def store_latency(path, latency: dict[str, float], *, private_key=None) -> list[str]:
    """Write `latency` ({sub-network label, e.g. 'width=0.5': median ms}) into the
    artifact at `path`. Every label must name one of its sub-networks; sub-networks not
    in `latency` keep their stored figure. Returns notes for the user (what was stored,
    what became of the signature)."""
    from dycomp.runtime.selectors import is_selected, verify_selected

    root = Path(path)
    raw = manifest_bytes(root)
    if not is_selected(raw):
        raise ArtifactError(f"{root} was not compiled with selectors: it has no table of "
                            "sub-network latencies")
    manifest, _ = verify_selected(root, raw)  # do not re-sign a tampered artifact
    entries = {e.get("label"): e for e in manifest["subnets"]}
    unknown = [label for label in latency if label not in entries]
    if unknown:
        raise ArtifactError(f"{root} has no sub-network {', '.join(unknown)}; it holds "
                            f"{', '.join(map(str, entries))}")
    for label, ms in latency.items():
        entries[label]["latency_ms"] = _milliseconds(label, ms)
    _replace_manifest(root, manifest)
    notes = [f"stored the median latency of {len(latency)} of {len(entries)} sub-networks "
             f"in {root / MANIFEST}"]
    return notes + _resign(root, private_key)


def _milliseconds(label: str, ms) -> float:
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms < float("inf"):
        raise ValueError(f"latency of {label}: {ms!r} is not a number of milliseconds")
    return float(ms)


def _replace_manifest(root: Path, manifest: dict) -> None:
    """Write manifest.json through a temporary file and an atomic rename."""
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST)


def _resign(root: Path, private_key) -> list[str]:
    """Re-sign with `private_key`, else remove a signature the new manifest broke."""
    signature = root / trust.SIGNATURE
    if private_key is not None:
        record = sign(root, private_key)
        return [f"re-signed {root / MANIFEST} with key {record['key']}"]
    if signature.is_file():
        signature.unlink()
        log.warning("%s: removed %s (it signed the previous manifest)", root, trust.SIGNATURE)
        return [f"removed {signature}: it signed the previous manifest; sign again with "
                f"`dycomp sign {root} --key KEY`"]
    return []
