"""The HTTP protocol of `dycomp serve`, as plain functions (no Ray, no web framework): parse
and validate a request body against the artifact's signature, and encode an answer as JSON
or `.npz`. Kept apart from the deployment so that every rule is tested without a server.

Request: JSON `{"inputs": {"x": [[...]]}}` (by input name), `{"inputs": [[...], ...]}` or a
bare list (positional), or an `.npz` body (`application/octet-stream` / `application/x-npz`)
whose arrays are named like the inputs or `arr_0`, `arr_1`, ... Answer: JSON
`{"outputs": ...}` (the output structure, arrays as nested lists) or an `.npz` of the
flattened outputs (`out_0`, `out_1_2`, ...), plus `path` and `decisions` when asked.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np

from dycomp.runtime.artifact import Signature, check_inputs
from dycomp.runtime.outputs import flatten_outputs

NPZ_TYPES = ("application/octet-stream", "application/x-npz")
MAX_BODY_BYTES = 16 << 20  # default limit on a request body (and an .npz's unpacked size)


class RequestError(Exception):
    """A request the server refuses: HTTP `status` and a message for the error body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """A parsed request: the input arrays in signature order, whether the path is wanted,
    and whether the answer goes back as `.npz`."""

    arrays: tuple
    want_path: bool = False
    npz: bool = False


def is_npz(content_type: str | None) -> bool:
    """Whether a Content-Type names an `.npz` body (parameters such as charset ignored)."""
    return (content_type or "").split(";")[0].strip().lower() in NPZ_TYPES


def truthy(value: str | None) -> bool:
    """A query flag: `?path=1`, `?path=true`, `?path=yes` (and bare `?path`) are on."""
    return value is not None and value.strip().lower() in ("", "1", "true", "yes", "on")


def check_size(length: int | None, limit: int) -> None:
    """413 for a body (or a Content-Length) over `limit` bytes."""
    if length is not None and length > limit:
        raise RequestError(413, f"request body of {length} bytes is over the limit of "
                                f"{limit} bytes")


def parse_request(body: bytes, content_type: str | None, sig: Signature, *,
                  want_path: bool = False, limit: int = MAX_BODY_BYTES) -> Request:
    """The input arrays of a request body, checked against `sig`: RequestError 400 for a
    malformed body or inputs that do not match (name, count, dtype, shape), 413 over
    `limit`."""
    check_size(len(body), limit)
    npz = is_npz(content_type)
    values = _npz_values(body, sig, limit) if npz else _json_values(body, sig)
    try:
        arrays = check_inputs(sig, tuple(values))
    except ValueError as e:
        raise RequestError(400, str(e)) from None
    return Request(tuple(arrays), want_path, npz)


def _json_values(body: bytes, sig: Signature) -> list:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"body is not JSON ({e}); send {{\"inputs\": ...}} or an "
                                ".npz with Content-Type application/octet-stream") from None
    if isinstance(doc, dict):
        if set(doc) != {"inputs"}:
            raise RequestError(400, f"JSON object must have the one key 'inputs'; got "
                                    f"{sorted(doc)}")
        doc = doc["inputs"]
    if isinstance(doc, dict):
        return _by_name(doc, sig)
    if not isinstance(doc, list):
        raise RequestError(400, f"inputs must be a list (positional) or an object (by name); "
                                f"got {type(doc).__name__}")
    return doc


def _by_name(doc: dict, sig: Signature) -> list:
    names = [s.name for s in sig.inputs]
    missing, unknown = [n for n in names if n not in doc], sorted(set(doc) - set(names))
    if missing or unknown:
        raise RequestError(400, "inputs by name: " + "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"unknown {', '.join(unknown)}" if unknown else "") if part))
    return [doc[n] for n in names]


def _npz_values(body: bytes, sig: Signature, limit: int) -> list:
    """The arrays of an `.npz` body, with the unpacked size capped (no zip bombs) and no
    pickles."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            unpacked = sum(info.file_size for info in zf.infolist())
        check_size(unpacked, limit)
        with np.load(io.BytesIO(body), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except RequestError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise RequestError(400, f"body is not an .npz archive ({e})") from None
    names = [s.name for s in sig.inputs]
    for order in (names, [f"arr_{i}" for i in range(len(arrays))]):
        if set(arrays) == set(order):
            return [arrays[k] for k in order]
    raise RequestError(400, f".npz holds arrays {', '.join(sorted(arrays)) or '(none)'}; name "
                            f"them {', '.join(names)} or arr_0, arr_1, ... in order")


def error_body(message: str, sig: Signature | None = None) -> dict:
    """The JSON error body: the message and, where the inputs were wrong, the signature."""
    return {"error": message} | ({"expected": str(sig)} if sig is not None else {})


# -- answers -------------------------------------------------------------------------------
def to_json(value):
    """An output structure as JSON data: arrays and numpy scalars as (nested) lists and
    numbers, tuples as lists, dicts kept; float32 values are exact in a double."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def answer_json(outputs, path: list | None = None, label: str | None = None) -> bytes:
    """The JSON answer: outputs and, when asked, the path (region names) and its label.
    NaN and infinities are written as Python's json does (NaN, Infinity)."""
    doc = {"outputs": to_json(outputs)}
    if path is not None:
        doc["path"] = list(path)
        if label is not None:
            doc["decisions"] = label
    return json.dumps(doc).encode()


def answer_npz(outputs, path: list | None = None, label: str | None = None) -> bytes:
    """The `.npz` answer: each non-None output leaf as an array named like `dycomp run
    --out` names it, plus `path` (strings) and `decisions` when asked."""
    arrays = {k: np.asarray(v) for k, v in flatten_outputs(outputs) if v is not None}
    if path is not None:
        arrays["path"] = np.asarray(list(path), dtype=str)
        if label is not None:
            arrays["decisions"] = np.asarray(label, dtype=str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_npz_answer(data: bytes) -> dict[str, np.ndarray]:
    """An `.npz` answer as a dict of arrays (for clients and tests)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
