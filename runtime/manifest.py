"""Checking a manifest as if a stranger wrote it: field types, paths that stay inside the artifact, and
digests of the manifest's own content (which `kiln inspect --verify` compares).

A manifest is a dict parsed from JSON. `check_manifest` raises one-line ArtifactErrors naming the file,
the field, what was found and what is valid; it does not build anything (runtime.artifact does).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.errors import ArtifactError

DIGEST_FIELD = "manifest_sha256"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
INT_LIKE = re.compile(r"^[0-9]+$")

# meta keys Kiln reads, and what each must be; other keys are kept as they are (newer Kilns may add some)
META_PATHS = ("model_file", "tokenizer", "weights_file")
META_INTS = ("max_length", "vocab_size", "pad_token_id", "num_heads", "hidden_size")
META_STRS = ("model_type", "pooling", "precision", "method")
META_BOOLS = ("normalize", "trust_pickle")


class Checker:
    """Field checks for one manifest file; every failure names the file and the field."""

    def __init__(self, mpath: Path, root: Path) -> None:
        self.mpath = mpath
        self.root = root

    def fail(self, where: str, found: Any, valid: str) -> ArtifactError:
        return ArtifactError(f"{self.mpath} has a malformed field {where}: got {shown(found)}; valid: {valid}")

    def require(self, d: dict[str, Any], key: str, where: str) -> Any:
        if key not in d:
            raise ArtifactError(f"{self.mpath} is missing or has a malformed field {where}: it is missing")
        return d[key]

    def str_(self, value: Any, where: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or (not value and not allow_empty):
            raise self.fail(where, value, "a non-empty string")
        return value

    def int_(self, value: Any, where: str) -> int:
        # the bound keeps every count a C long (numpy, onnxruntime and the tokenizer take them as such)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
            huge = isinstance(value, int) and value.bit_length() >= 64
            raise self.fail(where, "a huge number" if huge else value, "an integer in 0..2147483647")
        return value

    def dict_(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, value, "a JSON object")
        return value

    def list_(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, value, "a JSON list")
        return value

    def digest(self, value: Any, where: str, optional: bool = False) -> None:
        if optional and value is None:
            return
        if not isinstance(value, str) or not SHA256.match(value):
            raise self.fail(where, value, "a sha256 (64 lowercase hex digits)" + (" or null" if optional else ""))

    def path(self, value: Any, where: str) -> None:
        """A relative path that stays inside the artifact, symlinks resolved."""
        valid = "a relative path inside the artifact directory"
        if not isinstance(value, str) or not value or "\0" in value or "\\" in value:
            raise self.fail(where, value, valid)
        pure = PurePosixPath(value)
        if pure.is_absolute() or ".." in pure.parts:
            raise self.fail(where, value, valid + " (no absolute paths, no '..')")
        root = os.path.realpath(self.root)
        target = os.path.realpath(os.path.join(root, value))
        if target != root and not target.startswith(root + os.sep):
            raise self.fail(where, value, valid + f" (it resolves to {target}, through a symlink)")

    def spec(self, value: Any, where: str) -> None:
        d = self.dict_(value, where)
        self.str_(self.require(d, "name", f"{where}.name"), f"{where}.name")
        self.str_(self.require(d, "dtype", f"{where}.dtype"), f"{where}.dtype")
        shape = self.list_(self.require(d, "shape", f"{where}.shape"), f"{where}.shape")
        for i, dim in enumerate(shape):
            if isinstance(dim, bool) or not (isinstance(dim, int) and dim >= 0 or isinstance(dim, str) and dim):
                raise self.fail(f"{where}.shape[{i}]", dim, "an integer >= 0 or a dimension name such as \"batch\"")
        profile = d.get("profile")
        if profile is not None:
            if not isinstance(profile, list) or len(profile) != 3:
                raise self.fail(f"{where}.profile", profile, "null or [min, opt, max] shapes")
            for j, dims in enumerate(profile):
                for k, n in enumerate(self.list_(dims, f"{where}.profile[{j}]")):
                    self.int_(n, f"{where}.profile[{j}][{k}]")

    def meta(self, value: Any) -> None:
        meta = self.dict_(value, "meta")
        for key in META_PATHS:
            if key in meta:
                self.path(meta[key], f"meta.{key}")
        for key in META_INTS:
            if key in meta:
                self.int_(meta[key], f"meta.{key}")
        for key in META_STRS:
            if key in meta:
                self.str_(meta[key], f"meta.{key}")
        for key in META_BOOLS:
            if key in meta and not isinstance(meta[key], bool):
                raise self.fail(f"meta.{key}", meta[key], "true or false")
        if "labels" in meta:
            for k, name in self.dict_(meta["labels"], "meta.labels").items():
                if not INT_LIKE.match(k):
                    raise self.fail("meta.labels", k, "class ids (\"0\", \"1\", ...) as keys")
                self.str_(name, f"meta.labels[{k!r}]", allow_empty=True)
        if "tokenizer_files" in meta:
            for i, rel in enumerate(self.list_(meta["tokenizer_files"], "meta.tokenizer_files")):
                self.path(rel, f"meta.tokenizer_files[{i}]")
        if "structure" in meta:
            structure = self.dict_(meta["structure"], "meta.structure")
            for key in ("heads", "ffn"):
                for i, n in enumerate(self.list_(self.require(structure, key, f"meta.structure.{key}"),
                                                 f"meta.structure.{key}")):
                    self.int_(n, f"meta.structure.{key}[{i}]")

    def step(self, value: Any, where: str) -> None:
        d = self.dict_(value, where)
        self.str_(self.require(d, "stage", f"{where}.stage"), f"{where}.stage")
        self.dict_(self.require(d, "config", f"{where}.config"), f"{where}.config")
        seconds = self.require(d, "seconds", f"{where}.seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise self.fail(f"{where}.seconds", seconds, "a number")
        self.dict_(d.get("metrics", {}), f"{where}.metrics")
        for key in ("inputs_sha256", "outputs_sha256"):
            self.digest(d.get(key), f"{where}.{key}", optional=True)
        for lib, version in self.dict_(d.get("versions", {}), f"{where}.versions").items():
            self.str_(version, f"{where}.versions[{lib!r}]", allow_empty=True)
        if d.get("source") is not None:
            self.str_(d["source"], f"{where}.source")


def check_manifest(d: Any, mpath: Path, root: Path, formats: tuple[str, ...]) -> None:
    """Raise an ArtifactError for the first field whose type or path is not what Kiln writes."""
    c = Checker(mpath, root)
    if not isinstance(d, dict):
        raise ArtifactError(f"{mpath} must hold a JSON object; got {type(d).__name__}")
    fmt = c.require(d, "format", "format")
    if fmt not in formats:
        raise c.fail("format", fmt, ", ".join(formats))
    c.str_(c.require(d, "task", "task"), "task")
    for side in ("inputs", "outputs"):
        specs = c.list_(c.require(d, side, side), side)
        if not specs:
            raise c.fail(side, specs, "at least one tensor spec")
        for i, spec in enumerate(specs):
            c.spec(spec, f"{side}[{i}]")
    c.meta(d.get("meta", {}))
    labels = d.get("meta", {}).get("labels")
    if labels and d["task"].endswith("-classification") and d["task"] != "token-classification":
        # one name per class the model outputs: a short or doubled map would answer with the wrong names
        classes = d["outputs"][0]["shape"][-1] if d["outputs"][0]["shape"] else None
        if isinstance(classes, int) and sorted(int(k) for k in labels) != list(range(classes)):
            raise c.fail("meta.labels", f"{len(labels)} label(s)", f"one name for each of the model's {classes} classes "
                         f"(keys 0..{classes - 1})")
        if len(set(labels.values())) != len(labels):
            raise c.fail("meta.labels", sorted(labels.values()), "distinct names")
    for i, step in enumerate(c.list_(d.get("lineage", []), "lineage")):
        c.step(step, f"lineage[{i}]")
    for rel, digest in c.dict_(d.get("files", {}), "files").items():
        c.path(rel, f"files[{rel!r}]")
        c.digest(digest, f"files[{rel!r}]")
    if DIGEST_FIELD in d:
        for key, digest in c.dict_(d[DIGEST_FIELD], DIGEST_FIELD).items():
            c.digest(digest, f"{DIGEST_FIELD}[{key!r}]")


def shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def canonical_sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def content_digests(manifest: dict[str, Any]) -> dict[str, str]:
    """sha256 of each manifest field (each meta key on its own), so a check can name what changed.

    Taken over the JSON form, so it reads the same before writing and after parsing.
    """
    d = json.loads(json.dumps({k: v for k, v in manifest.items() if k != DIGEST_FIELD}))
    out = {}
    for key, value in d.items():
        if key == "meta" and isinstance(value, dict):
            out.update({f"meta.{k}": canonical_sha256(v) for k, v in value.items()})
        else:
            out[key] = canonical_sha256(value)
    return out


def changed_fields(manifest: dict[str, Any]) -> list[str] | None:
    """Fields whose content differs from the digests recorded when the manifest was written; None if it
    records none (made by a Kiln from before manifests covered themselves)."""
    recorded = manifest.get(DIGEST_FIELD)
    if not isinstance(recorded, dict):
        return None
    now = content_digests(manifest)
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
