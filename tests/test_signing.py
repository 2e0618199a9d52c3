"""Signed releases: kiln sign / kiln verify / kiln keygen and runtime.signing on a copy of the tiny ONNX artifact."""

import json
import shutil
import stat
import sys

import pytest
from click.testing import CliRunner

from exporter.cli import main
from runtime.errors import ArtifactError
from runtime.signing import SIGNATURE, generate_key_pair, sign_artifact, verify_artifact


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def one_line_error(result, match):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs: the release key and a stranger's."""
    root = tmp_path_factory.mktemp("keys")
    return generate_key_pair(root / "release"), generate_key_pair(root / "other")


@pytest.fixture()
def art(tiny_onnx, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(tiny_onnx.path, dst)
    return dst


@pytest.fixture()
def signed(art, keys):
    sign_artifact(art, keys[0][0])
    return art


def test_sign_then_verify_covers_every_file_but_the_signature(signed, keys, tmp_path):
    info = verify_artifact(signed, keys[0][1])
    assert (signed / SIGNATURE).is_file() and SIGNATURE not in info.files
    assert "manifest.json" in info.files and "model.onnx" in info.files
    assert set(info.files) == {str(p.relative_to(signed)) for p in signed.rglob("*") if p.name != SIGNATURE}
    assert info.key_id.startswith("sha256:")
    # the directory's name is not signed: a release can be copied anywhere
    moved = tmp_path / "released-elsewhere"
    shutil.copytree(signed, moved)
    verify_artifact(moved, keys[0][1])


def test_changed_byte_in_the_model_is_refused_naming_the_file(signed, keys):
    model = signed / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"altered after signing: changed model\.onnx; re-sign"):
        verify_artifact(signed, keys[0][1])


def test_edited_labels_in_the_manifest_are_refused(signed, keys):
    path = signed / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["meta"]["id2label"] = {"0": "positive", "1": "negative"}
    path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(ArtifactError, match=r"changed manifest\.json"):
        verify_artifact(signed, keys[0][1])
    path.write_text("{ not json")  # reported as an alteration, not as a malformed manifest
    with pytest.raises(ArtifactError, match=r"changed manifest\.json"):
        verify_artifact(signed, keys[0][1])


def test_added_and_removed_files_are_refused(signed, keys):
    (signed / "extra.py").write_text("print('hello')\n")
    (signed / ".gitattributes").write_text("* binary\n")  # the library skips git files unless told not to
    with pytest.raises(ArtifactError, match=r"added \.gitattributes, extra\.py"):
        verify_artifact(signed, keys[0][1])
    (signed / "extra.py").unlink()
    (signed / ".gitattributes").unlink()
    (signed / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match=r"removed tokenizer\.json"):
        verify_artifact(signed, keys[0][1])


def test_another_key_is_refused(signed, keys):
    with pytest.raises(ArtifactError, match="was signed with another key than"):
        verify_artifact(signed, keys[1][1])


def test_unsigned_artifact_is_refused_with_the_command_to_sign(art, keys):
    with pytest.raises(ArtifactError, match=r"has no signature \(model\.sig\); sign it with `kiln sign .* --key"):
        verify_artifact(art, keys[0][1])


def test_a_tampered_signature_is_refused(signed, keys, capsys):
    sig = signed / SIGNATURE
    bundle = json.loads(sig.read_text())
    bundle["verificationMaterial"]["publicKey"]["hint"] = ""  # hide the key id: the signature check still fails
    sig.write_text(json.dumps(bundle))
    with pytest.raises(ArtifactError, match="does not verify with the public key"):
        verify_artifact(signed, keys[1][1])
    assert capsys.readouterr().out == ""  # the library's warning goes to stderr: stdout stays clean for --json
    sig.write_text("not json")
    with pytest.raises(ArtifactError, match="is not a model-signing signature"):
        verify_artifact(signed, keys[0][1])


def test_bad_key_files_get_one_sentence(art, keys, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00\x01 not a key")
    with pytest.raises(ArtifactError, match="is not a PEM private key"):
        sign_artifact(art, garbage)
    with pytest.raises(ArtifactError, match="is a public key; `kiln sign` needs the private key"):
        sign_artifact(art, keys[0][1])
    with pytest.raises(ArtifactError, match="private key '.*missing.pem' does not exist"):
        sign_artifact(art, tmp_path / "missing.pem")
    assert not (art / SIGNATURE).exists()
    sign_artifact(art, keys[0][0])
    with pytest.raises(ArtifactError, match="is not a PEM public key"):
        verify_artifact(art, garbage)
    with pytest.raises(ArtifactError, match="is a private key; verify with the public key"):
        verify_artifact(art, keys[0][0])


def test_a_key_on_an_unsupported_curve_or_algorithm_is_refused(art, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    for name, key in (("k1", ec.generate_private_key(ec.SECP256K1())), ("ed", ed25519.Ed25519PrivateKey.generate())):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        with pytest.raises(ArtifactError, match="needs an elliptic-curve key on P-256, P-384, P-521"):
            sign_artifact(art, path)


def test_an_encrypted_key_needs_its_password(art, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path, pub = tmp_path / "enc.pem", tmp_path / "enc.pub.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"s3cret")))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ArtifactError, match="is encrypted; give its password with --password-env"):
        sign_artifact(art, path)
    with pytest.raises(ArtifactError, match="cannot be decrypted: wrong password"):
        sign_artifact(art, path, password="wrong")
    sign_artifact(art, path, password="s3cret")
    verify_artifact(art, pub)


def test_signing_refuses_an_artifact_that_disagrees_with_its_manifest(art, keys):
    (art / "model.onnx").write_bytes(b"swapped")
    with pytest.raises(ArtifactError, match="model.onnx missing or changed .* refusing to sign"):
        sign_artifact(art, keys[0][0])
    assert not (art / SIGNATURE).exists()


def test_missing_library_names_the_extra(art, keys, monkeypatch):
    monkeypatch.setitem(sys.modules, "model_signing", None)  # makes `import model_signing` raise ImportError
    with pytest.raises(ArtifactError, match=r"pip install 'modelkiln\[sign\]'"):
        verify_artifact(art, keys[0][1])


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path):
    r = run("keygen", "-o", tmp_path / "k", "--json")
    assert r.exit_code == 0, r.output
    paths = json.loads(r.stdout)
    assert stat.S_IMODE((tmp_path / "k" / "private.pem").stat().st_mode) == 0o600
    assert paths["public_key"].endswith("public.pem")
    before = (tmp_path / "k" / "private.pem").read_bytes()
    one_line_error(run("keygen", "-o", tmp_path / "k"), "already exist; pass --force")
    assert (tmp_path / "k" / "private.pem").read_bytes() == before
    assert run("keygen", "-o", tmp_path / "k", "--force").exit_code == 0
    assert (tmp_path / "k" / "private.pem").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "k" / "private.pem").stat().st_mode) == 0o600


def test_cli_sign_and_verify(art, keys):
    (private, public), (_, other) = keys
    r = run("sign", art, "--key", private, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["signature"] == str(art / SIGNATURE)
    r = run("verify", art, "--pub", public, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["verified"] is True and "model.onnx" in report["files"]
    r = run("verify", art, "--pub", public)
    assert r.exit_code == 0 and r.stdout.startswith("verified") and "files" in r.stdout
    one_line_error(run("verify", art, "--pub", other), "was signed with another key")
    (art / "model.onnx").write_bytes((art / "model.onnx").read_bytes() + b"\0")
    one_line_error(run("verify", art, "--pub", public, "--json"), "altered after signing: changed model.onnx")


def test_cli_errors_are_one_line(art, keys, tmp_path):
    (private, public), _ = keys
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN EC PRIVATE KEY-----\nnonsense\n-----END EC PRIVATE KEY-----\n")
    one_line_error(run("verify", art, "--pub", public), "has no signature (model.sig)")
    one_line_error(run("sign", art, "--key", garbage), "is not a PEM private key")
    one_line_error(run("sign", art, "--key", private, "--password-env", "KILN_TEST_UNSET_VAR"),
                   "--password-env KILN_TEST_UNSET_VAR: that environment variable is not set")
    one_line_error(run("sign", tmp_path / "nowhere", "--key", private), "does not exist")
    one_line_error(run("verify", art), "Missing option '--pub'")


def test_readme_signing_commands_run_as_written(art, tmp_path, monkeypatch):
    from tests.test_readme import README

    block = README.split("## Signed releases", 1)[1].split("```", 2)[1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "art").rename(tmp_path / "ft-int8")
    commands = [line.split("#", 1)[0].replace("[--json]", "").split()[1:]
                for line in block.splitlines() if line.startswith("kiln ")]
    assert [c[0] for c in commands] == ["keygen", "sign", "verify"]
    for args in commands:
        r = run(*args)
        assert r.exit_code == 0, (args, r.output)
    assert (tmp_path / "ft-int8" / SIGNATURE).is_file()


def test_a_derived_artifact_does_not_inherit_the_signature(signed, tmp_path):
    from exporter.quantize import QuantConfig, quantize
    from runtime import Artifact

    out = quantize(Artifact.load(signed), QuantConfig(method="dynamic-int8"), tmp_path / "int8")
    assert not (out.path / SIGNATURE).exists()


def test_sign_refuses_a_manifest_edited_by_hand(art, keys):
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["meta"]["labels"] = {"0": "X", "1": "positive"}
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"manifest.json \(meta.labels\).*refusing to sign"):
        sign_artifact(art, keys[0][0])
    assert not (art / SIGNATURE).exists()
