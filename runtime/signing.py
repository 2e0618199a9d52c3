"""Signed releases: sign an artifact directory with an elliptic-curve key and verify it (OpenSSF model-signing).

The signature (`model.sig`, a Sigstore bundle) lives inside the artifact and covers every other file in it,
manifest.json included: an edited label, a changed weight, a removed or an added file all fail
verification. The directory's own name is not covered, so a signed artifact can be copied or renamed.

model-signing and cryptography are imported inside the functions: `import runtime` needs only numpy, and a
service that never verifies never pays for them.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.artifact import Artifact
from runtime.errors import ArtifactError

SIGNATURE = "model.sig"
INSTALL_HINT = "pip install 'modelkiln[sign]'"
# The curves model-signing accepts (it follows Sigstore's list).
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


@dataclass(frozen=True)
class SignatureInfo:
    """What a signature covers: the artifact, where the signature is, the signing key's id, the signed files."""

    artifact: str
    signature: str
    key_id: str
    files: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"files": list(self.files)}


def sign_artifact(path: str | Path, private_key_path: str | Path, signature_path: str | Path | None = None, *,
                  password: str | None = None) -> SignatureInfo:
    """Sign every file of the artifact at `path` (except the signature itself); write `path/model.sig`.

    Refuses an artifact whose files already disagree with its manifest: signing would bless the change.
    """
    ms = _library()
    art = Artifact.load(path)
    key = _load_private_key(Path(private_key_path), password)  # before hashing: a bad key fails fast
    changed = art.verify() + [f"manifest.json ({field})" for field in art.verify_manifest() or []]
    if changed:
        raise ArtifactError(
            f"{art.path}: {', '.join(changed)} missing or changed since the manifest was written; "
            "refusing to sign an artifact that disagrees with its own manifest (re-export it)")
    sig = Path(signature_path) if signature_path is not None else art.path / SIGNATURE
    if sig.is_dir():
        raise ArtifactError(f"signature path {str(sig)!r} is a directory; give a file path such as {SIGNATURE}")
    # model-signing hashes the model before it writes the signature, so this temporary file is not signed;
    # renaming it into place means a reader never sees half a signature.
    tmp = sig.with_name(f".{sig.name}.{os.getpid()}.tmp")
    try:
        # the library hands `password` to cryptography as it is, and cryptography wants bytes
        secret = password.encode() if password is not None else None
        ms.signing.Config().use_elliptic_key_signer(private_key=private_key_path, password=secret) \
            .set_hashing_config(_hashing_config(ms, art.path, sig)).sign(art.path, tmp)
        os.replace(tmp, sig)
    except OSError as e:
        raise ArtifactError(f"cannot sign {art.path}: {e.strerror or e} ({e.filename or sig})") from None
    except ValueError as e:  # a symlink or special file in the artifact
        raise ArtifactError(f"cannot sign {art.path}: {_first_line(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return SignatureInfo(str(art.path), str(sig), key_id(key.public_key()), _signed_files(sig))


def verify_artifact(path: str | Path, public_key_path: str | Path,
                    signature_path: str | Path | None = None) -> SignatureInfo:
    """Check that the artifact at `path` is exactly what the holder of the private key signed.

    Raises ArtifactError naming the reason: unsigned, altered (and which files), another key, a bad key file.
    """
    ms = _library()
    root = Path(path)
    if not root.is_dir():
        Artifact.load(root)  # raises its own sentence: missing, or a file
    sig = Path(signature_path) if signature_path is not None else root / SIGNATURE
    if not sig.is_file():
        Artifact.load(root)  # "not a Kiln artifact" says more than "unsigned"
        raise ArtifactError(
            f"artifact {str(root)!r} has no signature ({sig.name}); "
            f"sign it with `kiln sign {root} --key PRIVATE.pem`")
    key = _load_public_key(Path(public_key_path))
    _check_bundle(sig)
    from cryptography.exceptions import InvalidSignature

    # The signature is checked before the manifest is read: a manifest damaged after signing is reported
    # as an alteration, not as a malformed manifest.
    config = ms.verifying.Config().use_elliptic_key_verifier(public_key=public_key_path) \
        .set_hashing_config(_hashing_config(ms, root, sig))
    try:
        # the library print()s a warning for signatures without a key id: keep stdout for --json
        with contextlib.redirect_stdout(sys.stderr):
            config.verify(root, sig)
    except InvalidSignature:
        raise ArtifactError(
            f"{sig} does not verify with the public key {str(public_key_path)!r}: "
            "it was made with another key, or the signature file was altered") from None
    except OSError as e:
        raise ArtifactError(f"cannot verify {root}: {e.strerror or e} ({e.filename})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise _verification_error(root, sig, public_key_path, e) from None
    art = Artifact.load(root)  # signed, and still it must be an artifact
    return SignatureInfo(str(art.path), str(sig), key_id(key), _signed_files(sig))


def generate_key_pair(directory: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write a new P-256 key pair, `private.pem` (mode 0600) and `public.pem`, into `directory`."""
    _library()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{str(out)!r} is a file; give a directory for the key pair")
    private, public = out / "private.pem", out / "public.pem"
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing and not force:
        raise ArtifactError(f"{' and '.join(existing)} already exist; pass --force to replace the key pair "
                            "(artifacts signed with the old key will no longer verify with the new one)")
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
        _write_atomic(public, _public_pem(key.public_key()), 0o644)
    except OSError as e:
        raise ArtifactError(f"cannot write the key pair into {out}: {e.strerror or e}") from None
    return private, public


def key_id(public_key: Any) -> str:
    """sha256 of the public key's PEM: the id model-signing records in the signature to tell keys apart."""
    return "sha256:" + hashlib.sha256(_public_pem(public_key)).hexdigest()


def _library() -> Any:
    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as e:  # also a missing dependency of the library itself
        raise ArtifactError(
            f"signing and verifying need the model-signing library ({e}); install it with {INSTALL_HINT}") from None
    return model_signing


def _hashing_config(ms: Any, root: Path, sig: Path) -> Any:
    """Hash every file but the signature; git files too (the library skips them by default: an added
    `.gitattributes` would pass unseen)."""
    ignored = []
    try:
        ignored.append(sig.absolute().relative_to(root.absolute()))
    except ValueError:  # a signature kept outside the artifact is not in the hashed tree
        pass
    return ms.hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=False)


def _read_key_file(path: Path, what: str) -> bytes:
    if not path.exists():
        raise ArtifactError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{what} {str(path)!r} is not a file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None


def _load_private_key(path: Path, password: str | None) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read_key_file(path, "private key")
    if b"PUBLIC KEY-----" in data:
        raise ArtifactError(f"{str(path)!r} is a public key; `kiln sign` needs the private key "
                            "(`kiln verify` takes the public one)")
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password is not None else None)
    except TypeError:  # encrypted without a password, or a password for an unencrypted key
        raise ArtifactError(
            f"private key {str(path)!r} is encrypted; give its password with --password-env VAR" if password is None
            else f"private key {str(path)!r} is not encrypted; drop --password-env") from None
    except ValueError as e:
        what = "is not a PEM private key" if password is None else "cannot be decrypted: wrong password?"
        raise ArtifactError(f"{str(path)!r} {what} ({_first_line(e)})") from None
    except Exception as e:  # cryptography raises its own types for unsupported PEM content
        raise ArtifactError(f"{str(path)!r} is not a usable PEM private key ({_first_line(e)})") from None
    _check_curve(key.public_key(), path)
    return key


def _load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise ArtifactError(f"{str(path)!r} is a private key; verify with the public key "
                            "(the private key stays with whoever signs)")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as e:  # ValueError for garbage; cryptography's own types for unsupported content
        raise ArtifactError(f"{str(path)!r} is not a PEM public key ({_first_line(e)})") from None
    _check_curve(key, path)
    return key


def _check_curve(public_key: Any, path: Path) -> None:
    curve = getattr(getattr(public_key, "curve", None), "name", None)
    if curve not in CURVES:
        algorithm = type(public_key).__name__.lstrip("_").replace("PublicKey", "")  # RSA, Ed25519, DSA, ...
        kind = f"an elliptic-curve key on {curve}" if curve else f"a key of type {algorithm}"
        raise ArtifactError(
            f"{str(path)!r} holds {kind}; model-signing needs an elliptic-curve key on "
            f"{', '.join(CURVES.values())} (make a pair with `kiln keygen -o DIR`)")


def _public_pem(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_bundle(sig: Path) -> None:
    """The signature file is a JSON Sigstore bundle with a DSSE envelope; anything else gets one sentence."""
    try:
        bundle = json.loads(sig.read_text(encoding="utf-8"))
        ok = isinstance(bundle, dict) and isinstance(bundle.get("dsseEnvelope"), dict) \
            and isinstance(bundle.get("verificationMaterial"), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise ArtifactError(f"{sig} is not a model-signing signature (expected a Sigstore bundle in JSON); "
                            "sign the artifact again with `kiln sign`")


def _signed_files(sig: Path) -> tuple[str, ...]:
    """The file names in the signed statement (read after signing or a successful verification)."""
    try:
        bundle = json.loads(sig.read_text(encoding="utf-8"))
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        return tuple(sorted(r["name"] for r in statement["predicate"]["resources"]))
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def _verification_error(root: Path, sig: Path, public_key_path: str | Path, e: Exception) -> ArtifactError:
    text = str(e)
    if text.startswith("Key mismatch"):
        return ArtifactError(f"{sig} was signed with another key than {str(public_key_path)!r}")
    if text.startswith("Signature mismatch:"):
        return ArtifactError(f"artifact {str(root)!r} was altered after signing: {_describe_mismatch(text)}; "
                             "re-sign it if the change is intended")
    return ArtifactError(f"{sig} cannot be verified: {_first_line(e)}")


def _describe_mismatch(text: str) -> str:
    """Turn model-signing's list of differences into 'changed: a; added: b; removed: c'."""
    try:
        diffs = ast.literal_eval(text.split(":", 1)[1].strip())
    except (ValueError, SyntaxError):
        diffs = None
    if not isinstance(diffs, list):
        return "files differ from the signed ones"
    changed, added, removed = [], [], []
    for d in map(str, diffs):
        if d.startswith("Hash mismatch for '"):
            changed.append(d[len("Hash mismatch for '"):].split("'", 1)[0])
        elif d.startswith("Extra files found"):
            added += d.split("': ", 1)[-1].split(", ")
        elif d.startswith("Missing files"):
            removed += d.split("': ", 1)[-1].split(", ")
    parts = [f"{what} {', '.join(names)}" for what, names in
             (("changed", changed), ("added", added), ("removed", removed)) if names]
    return "; ".join(parts) or "files differ from the signed ones"


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write beside the target with `mode` from the start (a private key is never readable by others),
    then rename over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover could have looser permissions; O_EXCL makes a fresh file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask; the public key should stay readable
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
