"""Trust in a saved artifact: Ed25519 signatures over the manifest, and consent to native code.

The manifest holds the sha256 of every other file of the artifact, so a signature over the
manifest's bytes covers the whole artifact. The signature lives next to the manifest in
`signature.json` (the one file besides `manifest.json` that the manifest does not list):

    {"format": "dycomp-signature", "version": 1, "algorithm": "Ed25519",
     "signed": "manifest.json", "key": "sha256:<hex of the raw 32-byte public key>",
     "signature": "<base64 of the 64-byte signature>"}

Keys are PEM files: PKCS8 private keys, SubjectPublicKeyInfo public keys (what
`dycomp keygen` writes, and what `openssl genpkey -algorithm ed25519` makes). The
`cryptography` package does the cryptography; it is imported only to sign or verify, so an
unsigned ONNX artifact loads without it.

Native code (a TVM `regions.so`) runs with the caller's privileges as soon as it is loaded,
whatever the hashes say, so the loader asks for consent first: `trust_native=True` or a
signature verified with a public key the caller supplies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

from dycomp.runtime.errors import ArtifactError

SIGNATURE = "signature.json"
SIGNATURE_FORMAT = "dycomp-signature"
ALGORITHM = "Ed25519"
CONSENT_HINT = ("pass trust_native=True to dycomp.runtime.load / dycomp.load (--trust-native "
                "for dycomp run), or sign it with `dycomp sign` and load it with "
                "public_key=KEY.pub (--public-key KEY.pub)")


def _crypto():
    """cryptography's Ed25519 and serialization modules (imported only when needed)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ArtifactError("signing and verifying artifacts needs the 'cryptography' "
                            "package (pip install cryptography)") from None
    return ed25519, serialization


# -- keys ------------------------------------------------------------------------------------
def _read_key_file(path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{what} file {str(path)!r} does not exist") from None
    except OSError as e:
        raise ArtifactError(f"{what} file {str(path)!r} cannot be read ({e})") from None


def load_private_key(path):
    """The Ed25519 private key in the PEM (PKCS8) file `path`; ArtifactError if it is
    missing, not PEM, encrypted or another kind of key."""
    ed25519, serialization = _crypto()
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ArtifactError(f"private key {str(path)!r} is encrypted; dycomp reads "
                            "unencrypted PKCS8 PEM keys") from None
    except ValueError:
        raise ArtifactError(_not_a_key(path, "private", data)) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ArtifactError(f"private key {str(path)!r} is a {_kind(key)} key; dycomp signs "
                            "with Ed25519 keys (make one with `dycomp keygen`)")
    return key


def load_public_key(key):
    """An Ed25519 public key from a key object, PEM bytes or text, or the path of a PEM
    (SubjectPublicKeyInfo) file; ArtifactError if it is none of these."""
    ed25519, serialization = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raise ArtifactError("public_key is a private key; give the public key (KEY.pub)")
    if isinstance(key, str) and key.lstrip().startswith("-----BEGIN"):
        key = key.encode("ascii", "replace")  # PEM text rather than a file name
    where = "public_key (PEM bytes)" if isinstance(key, bytes) else f"public key {str(key)!r}"
    data = key if isinstance(key, bytes) else _read_key_file(key, "public key")
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError:
        raise ArtifactError(_not_a_key(where, "public", data)) from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise ArtifactError(f"{where} is a {_kind(loaded)} key; dycomp signatures use "
                            "Ed25519 keys")
    return loaded


def _not_a_key(where, kind: str, data: bytes) -> str:
    hint = (" (it holds a private key: give the public key, KEY.pub)"
            if kind == "public" and b"PRIVATE KEY" in data else
            " (it holds a public key: sign with the private key)"
            if kind == "private" and b"PUBLIC KEY" in data else "")
    return f"{where} is not a PEM {kind} key{hint}"


def _kind(key) -> str:
    return type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace(
        "PublicKey", "") or "different"


def fingerprint(public_key) -> str:
    """`sha256:<hex>` of the raw 32-byte Ed25519 public key."""
    _, serialization = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def keygen(private_path, public_path) -> str:
    """Write a new Ed25519 key pair as PEM files (the private one readable by its owner only);
    refuses to overwrite either. Returns the public key's fingerprint."""
    ed25519, serialization = _crypto()
    for p in (private_path, public_path):
        if Path(p).exists():
            raise ArtifactError(f"{str(p)!r} exists; refusing to overwrite a key file")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    Path(public_path).write_bytes(public)
    return fingerprint(key.public_key())


# -- signing and verifying -------------------------------------------------------------------
def sign(root, private_key_path, manifest_bytes: bytes) -> dict:
    """Sign `manifest_bytes` (the artifact's manifest.json) with the key in
    `private_key_path`, write `signature.json` into `root` and return its content."""
    key = load_private_key(private_key_path)
    record = {"format": SIGNATURE_FORMAT, "version": 1, "algorithm": ALGORITHM,
              "signed": "manifest.json", "key": fingerprint(key.public_key()),
              "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii")}
    (Path(root) / SIGNATURE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def verify(root: Path, manifest_bytes: bytes, signature_bytes: bytes | None, public_key) -> str:
    """Check `signature.json` (its bytes; None: missing) against `manifest_bytes` with
    `public_key`; ArtifactError on a missing, malformed, foreign or wrong signature.
    Returns the key's fingerprint."""
    key = load_public_key(public_key)
    expected = fingerprint(key)
    if signature_bytes is None:
        raise ArtifactError(f"{root}: {SIGNATURE} is missing; the artifact is not signed "
                            f"(a public key was given, so a signature by {expected} is "
                            "required; sign it with `dycomp sign`)")
    record = _signature_record(root, signature_bytes)
    if record["key"] != expected:
        raise ArtifactError(f"{root}: signed by key {record['key']}, not by the given public "
                            f"key {expected}")
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(record["signature"], manifest_bytes)
    except InvalidSignature:
        raise ArtifactError(f"{root}: the signature in {SIGNATURE} does not match "
                            "manifest.json (the manifest was modified after signing)") from None
    return expected


def _signature_record(root: Path, data: bytes) -> dict:
    where = f"{Path(root) / SIGNATURE}"
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != SIGNATURE_FORMAT:
        raise ArtifactError(f"{where}: not a {SIGNATURE_FORMAT} file")
    if record.get("algorithm") != ALGORITHM or record.get("version") != 1:
        raise ArtifactError(f"{where}: unsupported algorithm {record.get('algorithm')!r} or "
                            f"version {record.get('version')!r} (this dycomp verifies "
                            f"{ALGORITHM}, version 1)")
    for field in ("key", "signature"):
        if not isinstance(record.get(field), str):
            raise ArtifactError(f"{where}: field {field!r} is missing or not a string")
    try:
        record["signature"] = base64.b64decode(record["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise ArtifactError(f"{where}: field 'signature' is not base64") from None
    return record


def describe(root: Path, manifest_bytes: bytes, public_key=None) -> str:
    """One line on the artifact's signature for `dycomp inspect`: unsigned, signed by a
    key (not checked), or verified against `public_key` (ArtifactError if it fails)."""
    from dycomp.runtime.artifact import read_optional  # it imports this module

    data = read_optional(Path(root), SIGNATURE)
    if public_key is not None:
        return f"signature valid, by key {verify(root, manifest_bytes, data, public_key)}"
    if data is None:
        return "unsigned"
    record = _signature_record(root, data)
    return (f"signed by key {record['key']} (not verified: pass --public-key KEY.pub to "
            "check it)")


# -- consent to native code ------------------------------------------------------------------
def native_code(manifest: dict) -> dict[str, list[str]]:
    """Native libraries the artifact would load: file -> the subgraphs in it (every subgraph
    whose backend is not onnx: the same rule the loader uses to pick an executor)."""
    out: dict[str, list[str]] = {}
    for name, sub in manifest["subgraphs"].items():
        if isinstance(sub, dict) and sub.get("backend", "onnx") != "onnx":
            out.setdefault(str(sub.get("file")), []).append(name)
    return out


def require_consent(root: Path, manifest: dict, consented: bool) -> None:
    """ArtifactError, before anything is loaded, if the artifact holds native code and the
    caller neither passed trust_native nor verified a signature."""
    native = native_code(manifest)
    if not native or consented:
        return
    what = "; ".join(f"{f} ({len(subs)} subgraph{'s' * (len(subs) != 1)})"
                     for f, subs in native.items())
    raise ArtifactError(f"{root} contains native code: {what}, a compiled shared library that "
                        "runs with your privileges as soon as it is loaded (its sha256 in the "
                        "manifest only catches accidents, not tampering). Load it only if you "
                        f"trust where it came from: {CONSENT_HINT}")
