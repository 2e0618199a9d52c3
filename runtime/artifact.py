"""TensorSpec, Step and Artifact: the value that flows through Kiln's stages, and its manifest."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from runtime.errors import ArtifactError
from runtime.manifest import DIGEST_FIELD, changed_fields, check_manifest, content_digests

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FORMATS = ("hf", "torch", "onnx", "tensorrt", "triton", "openvino")  # openvino: IR (model.xml + model.bin)

# Libraries whose versions change what a stage produces; recorded in every Step.
TRACKED_LIBRARIES = (
    "modelkiln", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tokenizers",
    "numpy", "peft", "tensorrt", "tensorrt-rtx", "openvino", "nncf",
)

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output; symbolic dims are strings such as "batch"."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "profile": [list(p) for p in self.profile] if self.profile else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        profile = tuple(tuple(p) for p in d["profile"]) if d.get("profile") else None
        return cls(d["name"], d["dtype"], tuple(d["shape"]), profile)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(s) for s in self.shape)}]"


@dataclass(frozen=True)
class Step:
    """One stage in an artifact's lineage: what ran, with which config, and what it measured."""

    stage: str
    config: dict[str, Any]
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    inputs_sha256: str | None = None
    outputs_sha256: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # path of the artifact this step read, for finding the reference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass(frozen=True)
class Artifact:
    """A directory holding model file(s) and manifest.json; immutable once written."""

    path: Path
    format: str
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    lineage: tuple[Step, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # labels, tokenizer, model file, pooling
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ArtifactError(f"unknown artifact format {self.format!r}; valid: {', '.join(FORMATS)}")
        object.__setattr__(self, "path", Path(self.path))

    @property
    def model_file(self) -> Path:
        return self.path / self.meta.get("model_file", "")

    @property
    def model_meta(self) -> Any:
        """`meta` typed (runtime.tasks.meta.ModelMeta): one default per key, family keys in .extra."""
        from runtime.tasks.meta import ModelMeta  # here, not at the top: runtime.tasks imports this module

        return ModelMeta.from_dict(self.meta)

    @property
    def family(self) -> Any:
        """The task family (runtime.tasks.Family) that knows this artifact's inputs and outputs."""
        from runtime.tasks import family_for

        return family_for(self.task)

    @property
    def untrained_parameters(self) -> list[str]:
        """Parameters some step exported without trained weights (`kiln export --allow-untrained`): random."""
        return sorted({p for step in self.lineage for p in step.metrics.get("untrained_parameters", [])})

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in self.meta.get("labels", {}).items()}

    def to_manifest(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "format": self.format,
            "task": self.task,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "meta": self.meta,
            "lineage": [s.to_dict() for s in self.lineage],
            "files": self.files,
        }

    def write_manifest(self) -> None:
        """Write manifest.json with digests of its own content, which `verify_manifest` compares."""
        d = self.to_manifest()
        d[DIGEST_FIELD] = content_digests(d)
        (self.path / MANIFEST).write_text(json.dumps(d, indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Artifact:
        """Read an artifact directory; errors say what is missing and how to make one."""
        p = Path(path)
        if not p.exists():
            raise ArtifactError(f"artifact {str(p)!r} does not exist")
        if not p.is_dir():
            raise ArtifactError(f"artifact {str(p)!r} is a file; an artifact is a directory with {MANIFEST}")
        mpath = p / MANIFEST
        if not mpath.is_file():
            raise ArtifactError(
                f"{str(p)!r} is not a Kiln artifact (no {MANIFEST}); "
                f"make one with `kiln export SOURCE --task TASK -o {p}`")
        try:
            d = json.loads(mpath.read_text(encoding="utf-8"))
        except ValueError as e:  # also a 5,000-digit number and non-UTF-8 bytes
            raise ArtifactError(f"{mpath} is not valid JSON ({str(e).split(';')[0]})") from None
        except RecursionError:
            raise ArtifactError(f"{mpath} is not a manifest Kiln wrote (nested too deeply)") from None
        except OSError as e:
            raise ArtifactError(f"cannot read {mpath}: {e.strerror or e}") from None
        version = d.get("schema_version") if isinstance(d, dict) else None
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise ArtifactError(
                f"{mpath} has schema_version {version!r}; this Kiln reads versions 1..{SCHEMA_VERSION} "
                "(upgrade modelkiln to read newer artifacts)")
        # everything below is read as if a stranger wrote it: types, and paths that stay inside `p`
        check_manifest(d, mpath, p, FORMATS)
        return cls(
            path=p, format=d["format"], task=d["task"],
            inputs=tuple(TensorSpec.from_dict(s) for s in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(s) for s in d["outputs"]),
            lineage=tuple(Step.from_dict(s) for s in d.get("lineage", [])),
            meta=d.get("meta", {}), files=d.get("files", {}))

    def verify(self) -> list[str]:
        """Recompute every file's sha256; return the relative paths that are missing or changed."""
        bad = []
        for rel, digest in self.files.items():
            f = self.path / rel
            try:
                if not f.is_file() or file_sha256(f) != digest:
                    bad.append(rel)
            except OSError:  # unreadable counts as changed: it cannot be shown to match
                bad.append(rel)
        return bad

    def verify_manifest(self) -> list[str] | None:
        """Manifest fields (`meta.labels`, `lineage`, ...) changed since it was written; None when the
        manifest records no digests of itself (made by an older Kiln), so its content cannot be checked."""
        mpath = self.path / MANIFEST
        try:
            d = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return [MANIFEST]
        if not isinstance(d, dict):
            return [MANIFEST]
        return changed_fields(d)

    def check_integrity(self) -> bool | None:
        """Raise ArtifactError naming every file changed since export and every manifest field edited since it
        was written; return whether the manifest's own content was covered (None: an older Kiln recorded no
        digests of it, so only the files were checked)."""
        bad, changed = self.verify(), self.verify_manifest()
        problems = []
        if bad:
            problems.append(f"{len(bad)} file(s) missing or changed since export: {', '.join(bad)}")
        if changed:
            problems.append(f"manifest.json edited since it was written: {', '.join(changed)} changed")
        if problems:
            raise ArtifactError(f"{self.path}: {'; '.join(problems)}")
        return None if changed is None else True

    def source_path(self) -> Path | None:
        """The artifact this one was made from (for opening the torch reference), if recorded."""
        for step in reversed(self.lineage):
            if step.source:
                return Path(step.source)
        return None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root except the manifest, keyed by relative path.

    Artifacts nested below root (`kiln export model -o model/onnx`) and Kiln's staging folders are not
    part of root's content: writing them must not change the hash that later artifacts check root against.
    """
    nested = {m.parent for m in root.rglob(MANIFEST) if m.parent != root}
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if f.name == MANIFEST or any(p in nested for p in f.parents) or not f.is_file():
            continue
        if any(".kiln-tmp-" in part or ".kiln-old-" in part for part in rel.parts):
            continue
        out[str(rel)] = file_sha256(f)
    return out


def digest_of(files: dict[str, str]) -> str:
    """One sha256 over a {path: sha256} map: identifies an artifact's content."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that influence results (read from metadata; imports nothing)."""
    out = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
