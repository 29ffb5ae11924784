"""`dycomp keygen` and `dycomp sign`: Ed25519 keys and artifact signatures (no torch).

`dycomp run --public-key KEY.pub` (or `dycomp.runtime.load(..., public_key=...)`) then
refuses an artifact whose `signature.json` is missing, made with another key, or does not
match its manifest; a verified signature also stands for consent to a TVM artifact's
native code.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

_PLAIN = {"markup": False, "highlight": False, "soft_wrap": True}


@dataclass(frozen=True)
class KeygenConfig:
    """`dycomp keygen`: where to write the private key and its public half."""

    private: Path
    public: Path


@dataclass(frozen=True)
class SignConfig:
    """`dycomp sign`: the artifact and the private key to sign it with."""

    artifact: Path
    key: Path


def add_trust_commands(sub, formatter) -> None:
    """Register `keygen` and `sign` on the `dycomp` subcommand parser."""
    p = sub.add_parser(
        "keygen", help="make an Ed25519 key pair for signing artifacts",
        formatter_class=formatter,
        description="Write a new Ed25519 private key (PEM, PKCS8, unencrypted, mode 600) and "
                    "its public key (PEM, SubjectPublicKeyInfo). Keep the private key secret; "
                    "give the public key to whoever loads your artifacts. Existing files are "
                    "never overwritten. (openssl genpkey -algorithm ed25519 -out KEY and "
                    "openssl pkey -in KEY -pubout -out KEY.pub make the same files.)",
        epilog="example:\n  dycomp keygen release.key   (writes release.key, release.key.pub)\n")
    p.add_argument("private", metavar="KEY", type=Path, help="private key file to write")
    p.add_argument("--public", type=Path, metavar="KEY.pub",
                   help="public key file to write (default: KEY.pub)")
    p.set_defaults(command_fn=keygen_command, make_config=_keygen_config)

    p = sub.add_parser(
        "sign", help="sign an artifact (Ed25519 over its manifest)", formatter_class=formatter,
        description="Check an artifact (format, every file's sha256, paths) and sign its "
                    "manifest.json with an Ed25519 private key, writing signature.json into "
                    "the artifact. The manifest holds the sha256 of every other file, so the "
                    "signature covers them all. Verify with `dycomp run --public-key`.",
        epilog="example:\n  dycomp sign net.dyc --key release.key\n"
               "  dycomp run net.dyc --public-key release.key.pub --input x.npy\n")
    p.add_argument("artifact", metavar="PATH", type=Path, help="artifact directory")
    p.add_argument("--key", type=Path, required=True, metavar="KEY",
                   help="Ed25519 private key (PEM, PKCS8), e.g. from `dycomp keygen`")
    p.set_defaults(command_fn=sign_command, make_config=_sign_config)


def _keygen_config(ns: argparse.Namespace) -> KeygenConfig:
    public = ns.public or ns.private.with_name(ns.private.name + ".pub")
    return KeygenConfig(private=ns.private, public=public)


def _sign_config(ns: argparse.Namespace) -> SignConfig:
    return SignConfig(artifact=ns.artifact, key=ns.key)


def keygen_command(cfg: KeygenConfig, out: Console) -> None:
    """Write the key pair and print the public key's fingerprint."""
    from dycomp.runtime import trust

    fp = trust.keygen(cfg.private, cfg.public)
    out.print(f"private key {cfg.private} (keep it secret), public key {cfg.public}: {fp}",
              **_PLAIN)


def sign_command(cfg: SignConfig, out: Console) -> None:
    """Sign the artifact and print what was signed with which key."""
    from dycomp.runtime import artifact, trust

    record = artifact.sign(cfg.artifact, cfg.key)
    out.print(f"signed {cfg.artifact / 'manifest.json'} with key {record['key']}: "
              f"{cfg.artifact / trust.SIGNATURE}", **_PLAIN)
