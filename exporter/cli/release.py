"""`kiln sign`, `kiln verify` and `kiln keygen`: signed releases (the work is in runtime.signing)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from exporter.cli.common import emit, example, json_option
from runtime.errors import ConfigError
from runtime.signing import SignatureInfo, generate_key_pair, sign_artifact, verify_artifact  # lean: no library yet


def describe_signature(info: SignatureInfo, verb: str) -> str:
    return "\n".join([f"{verb}  {info.artifact}", f"signature {info.signature}", f"key       {info.key_id}",
                      f"files     {len(info.files)}: {', '.join(info.files)}"])


@click.command(epilog=example("kiln sign ft-int8 --key keys/private.pem"))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--key", required=True, type=click.Path(path_type=Path),
              help="PEM elliptic-curve private key (P-256, P-384 or P-521); `kiln keygen` makes one.")
@click.option("--password-env", metavar="VAR",
              help="Read the private key's password from environment variable VAR (never from the command line).")
@json_option
def sign(artifact: Path, key: Path, password_env: str | None, as_json: bool) -> None:
    """Sign every file of ARTIFACT, manifest included; writes ARTIFACT/model.sig."""
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise ConfigError(f"--password-env {password_env}: that environment variable is not set")
    info = sign_artifact(artifact, key, password=password)
    emit(info.to_dict(), as_json, lambda: describe_signature(info, "signed  "))


@click.command(epilog=example("kiln verify ft-int8 --pub keys/public.pem"))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--pub", required=True, type=click.Path(path_type=Path), help="PEM public key of the signer.")
@json_option
def verify(artifact: Path, pub: Path, as_json: bool) -> None:
    """Check that ARTIFACT is exactly what the holder of the private key signed (exit 1 if not)."""
    info = verify_artifact(artifact, pub)
    emit(info.to_dict() | {"verified": True}, as_json, lambda: describe_signature(info, "verified"))


@click.command(epilog=example("kiln keygen -o keys"))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Directory for private.pem (mode 0600) and public.pem.")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@json_option
def keygen(out: Path, force: bool, as_json: bool) -> None:
    """Make an elliptic-curve (P-256) key pair for `kiln sign` / `kiln verify`."""
    private, public = generate_key_pair(out, force=force)
    emit({"private_key": str(private), "public_key": str(public)}, as_json, lambda: "\n".join([
        f"private  {private}  (keep it secret: sign with `kiln sign ARTIFACT --key {private}`)",
        f"public   {public}  (ship it: verify with `kiln verify ARTIFACT --pub {public}`)"]))
