"""The client side of a peer: benchmarks/peer/peer_server.py in the peer's own Python, spoken to in JSON lines.
Peers may live in several environments (optimum's and optimum-intel's need different transformers): each
distinct Python gets its own server process (PeerClients)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.harness.candidates import CALIBRATED_KINDS, Candidate, Peer
from runtime.artifact import Artifact
from runtime.errors import ArtifactError, BackendError, ConfigError

SERVER = Path(__file__).resolve().parents[1] / "peer" / "peer_server.py"
# the README's place for the peer environment (benchmarks/peer/README.md), inside the checkout's ignored work/
DEFAULT_PEER_PYTHON = str(Path(__file__).resolve().parents[1] / "work" / "peer-venv" / "bin" / "python")
# what each kind imports in the peer's Python, and the requirements file of the environment that has it
PEER_LIBRARIES = {
    "transformers-eager": ("transformers", "benchmarks/peer/requirements.txt"),
    "optimum-fp32": ("optimum.onnxruntime", "benchmarks/peer/requirements.txt"),
    "optimum-int8": ("optimum.onnxruntime", "benchmarks/peer/requirements.txt"),
    "optimum-intel-fp32": ("optimum.intel", "benchmarks/peer/requirements-intel.txt"),
    "optimum-intel-int8": ("optimum.intel", "benchmarks/peer/requirements-intel.txt"),
}
# prints the modules of argv[1:] this Python cannot import (a missing parent package counts as missing)
MISSING_MODULES = """import importlib.util, json, sys
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False
print(json.dumps([m for m in sys.argv[1:] if not found(m)]))"""


def peer_python(asked: str | None = None) -> str:
    """The peer environment's interpreter: asked, else $KILN_PEER_PYTHON, else the documented default."""
    python = asked or os.environ.get("KILN_PEER_PYTHON") or DEFAULT_PEER_PYTHON
    if os.sep not in python and "/" not in python:  # a bare name ("python3") is a command: found on PATH
        import shutil

        found = shutil.which(python)
        if found is None:
            raise ConfigError(f"peer Python {python} is not on PATH; give its full path, make the peer environment "
                              "as benchmarks/peer/README.md says, or set KILN_PEER_PYTHON")
        return found
    if not Path(python).is_file():
        raise ConfigError(f"peer Python {python} does not exist; make the peer environment as "
                          "benchmarks/peer/README.md says, or set KILN_PEER_PYTHON")
    return python


def peer_env() -> dict[str, str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # the peer sees its own packages, never Kiln's
    return env


def check_peers(peers: Sequence[Peer]) -> None:
    """Before any timing: every peer's Python exists and can import its kind's library; else one line naming the
    peer, its Python and the requirements file to install there."""
    by_python: dict[str, list[Peer]] = {}
    for peer in peers:
        by_python.setdefault(peer_python(peer.python), []).append(peer)
    for python, group in by_python.items():
        modules = sorted({PEER_LIBRARIES[p.kind][0] for p in group})
        try:
            done = subprocess.run([python, "-c", MISSING_MODULES, *modules], capture_output=True, text=True,
                                  env=peer_env(), timeout=120)
            missing = json.loads(done.stdout) if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
            missing = None
        if missing is None:
            raise ConfigError(f"peer Python {python} does not run (asked which of {', '.join(modules)} it has); "
                              "make the peer environment as benchmarks/peer/README.md says")
        for peer in group:
            module, requirements = PEER_LIBRARIES[peer.kind]
            if module in missing:
                raise ConfigError(f"peer {peer.label} ({peer.kind}) needs {module}, which {python} cannot import; "
                                  f"install {requirements} there ({Path(python).parent}/pip install -r {requirements}) "
                                  "or give the peer the python of an environment that has it")


def calibration_texts(peer: Peer) -> list[str] | None:
    """A calibrated kind's texts, read on Kiln's side: a seeded sample of calib_samples texts from calib_data,
    drawn as the former benchmarks/runs/openvino_table.py drew optimum-intel's (so the peer model is the one its table used)."""
    if peer.kind not in CALIBRATED_KINDS:
        return None
    import numpy as np

    from calibration.datasets import load_texts

    texts = load_texts(peer.calib_data)
    return [str(t) for t in np.random.default_rng(0).choice(texts, min(peer.calib_samples, len(texts)), replace=False)]


class PeerClient:
    """One peer server process for the run; every peer pipeline lives in it, run one at a time."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> PeerClient:
        self.proc = subprocess.Popen([self.python, "-u", str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, text=True, env=peer_env())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.ask({"op": "quit"}, answer=False)
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired, BackendError):
                self.proc.kill()

    def ask(self, req: dict[str, Any], answer: bool = True) -> dict[str, Any]:
        assert self.proc and self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise BackendError(f"the peer process ({self.python}) exited (code {self.proc.poll()}); "
                               "its stderr above says why") from None
        if not answer:
            return {}
        line = self.proc.stdout.readline()
        if not line:
            raise BackendError(f"the peer process ({self.python}) exited (code {self.proc.wait()}) while answering "
                               f"{req['op']!r}; its stderr above says why")
        out = json.loads(line)
        if not out.get("ok"):
            raise BackendError(f"peer {req.get('label', '')} {req['op']} failed: {out.get('error')}")
        return out

    def versions(self) -> dict[str, str]:
        return self.ask({"op": "versions"})["versions"]

    def texts(self, texts: list[str], batch_size: int) -> None:
        self.ask({"op": "texts", "texts": texts, "batch_size": batch_size})

    def load(self, peer: Peer) -> dict[str, Any]:
        info = self.ask({"op": "load", "label": peer.label, "kind": peer.kind, "model": str(peer.model),
                         "work_dir": str(peer.work_dir) if peer.work_dir else None,
                         "calib_texts": calibration_texts(peer),
                         # the sweep opens the peer's model itself: the server keeps (and names) its file
                         "model_file": peer.sweep})["info"]
        return info | {"python": self.python}

    def run(self, label: str) -> dict[str, Any]:
        return self.ask({"op": "run", "label": label})


class PeerClients:
    """One PeerClient per distinct Python among the peers, behind PeerClient's own calls: texts go to every
    server, a peer is loaded and run in its own Python's."""

    def __init__(self, peers: Sequence[Peer]) -> None:
        self.clients = {python: PeerClient(python) for python in dict.fromkeys(p.python for p in peers)}
        self.by_label: dict[str, PeerClient] = {}
        self._started: list[PeerClient] = []

    def __enter__(self) -> PeerClients:
        try:
            for client in self.clients.values():
                self._started.append(client.__enter__())
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for client in reversed(self._started):
            client.__exit__(*exc)
        self._started.clear()

    def texts(self, texts: list[str], batch_size: int) -> None:
        for client in self.clients.values():
            client.texts(texts, batch_size)

    def load(self, peer: Peer) -> dict[str, Any]:
        client = self.clients[peer.python]
        info = client.load(peer)
        self.by_label[peer.label] = client
        return info

    def run(self, label: str) -> dict[str, Any]:
        return self.by_label[label].run(label)


# a peer model's format (the server's info["model_format"]) -> the Kiln artifact format and backend that open it
MODEL_FORMATS = {"onnx": ("onnx", "onnxruntime"), "openvino": ("openvino", "openvino")}
# the tokenizer files copied when the `like` artifact's manifest does not list its own (meta.tokenizer_files)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# the `like` artifact's meta keys that describe the model's interface (not how that artifact was made)
INTERFACE_META = ("model_type", "tokenizer", "tokenizer_files", "labels", "max_length", "pad_token_id", "vocab_size",
                  "pooling", "normalize")


def peer_model_files(src: Path, fmt: str) -> list[Path]:
    """The file(s) of a peer's model: an ONNX graph (with any external data beside it), or an OpenVINO IR's .xml
    and .bin."""
    if not src.is_file():
        raise ArtifactError(f"the peer's model file {src} does not exist")
    files = [src] + sorted(f for f in src.parent.glob(src.stem + ".*")
                           if f != src and f.is_file() and f.suffix in (".bin", ".onnx_data", ".data"))
    if fmt == "openvino" and src.with_suffix(".bin") not in files:
        raise ArtifactError(f"the peer's OpenVINO model {src} has no weights file {src.with_suffix('.bin').name} beside it")
    return files


def wrap_peer_model(src: Path, fmt: str, like: Artifact, dst: Path, made: dict[str, Any],
                    versions: dict[str, str] | None = None) -> Artifact:
    """A peer's model file(s) as a Kiln artifact at dst (which must not exist): the files as the peer wrote them,
    the `like` artifact's tokenizer, input/output specs and labels (the peer was made from the same checkpoint),
    and one lineage step saying it is a peer's model (made: kind, source, who made it), so a reader of the
    artifact or a report is not misled. Written into a staging folder beside dst and renamed once, as Kiln's
    stages write theirs."""
    import shutil
    import time

    from exporter.staging import make_staging_dir, remove_stale  # stdlib only, as in render.py
    from runtime.artifact import Step, digest_of, file_sha256, hash_files

    if fmt not in MODEL_FORMATS:
        raise ArtifactError(f"peer model format {fmt!r} is not one Kiln opens; valid: {', '.join(MODEL_FORMATS)}")
    started = time.perf_counter()
    files = peer_model_files(Path(src), fmt)
    dst = Path(dst).absolute()
    if dst.exists():
        raise ArtifactError(f"{dst} exists; the wrapped peer model is written only where nothing is")
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dst.parent)
    stage = make_staging_dir(dst)
    try:
        names = [f.name for f in files]  # as the peer wrote them: an ONNX graph names its external data file
        for f, name in zip(files, names):
            shutil.copy2(f, stage / name)
        tokenizer_files = like.meta.get("tokenizer_files") or [f for f in TOKENIZER_FILES if (like.path / f).is_file()]
        for name in tokenizer_files:
            shutil.copy2(like.path / name, stage / name)
        meta = {k: like.meta[k] for k in INTERFACE_META if k in like.meta} | {"model_file": names[0]}
        out_files = hash_files(stage)
        step = Step(stage="peer-model", config={**made, "specs_from": str(like.path.absolute())},
                    seconds=round(time.perf_counter() - started, 3),
                    inputs_sha256=digest_of({f.name: file_sha256(f) for f in files}),
                    outputs_sha256=digest_of(out_files), versions=dict(versions or {}))
        art = Artifact(stage, MODEL_FORMATS[fmt][0], like.task, like.inputs, like.outputs, (step,), meta, out_files)
        art.write_manifest()
        stage.rename(dst)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return Artifact.load(dst)


def peer_model_dir(peer: Peer, src: Path, fmt: str, like: Artifact) -> Path:
    """Where a peer's wrapped model lives: its work_dir (else beside its checkpoint, as the server's), in a folder
    named after the peer and a hash of the model's files and the like artifact, so a different model (or specs)
    is never mistaken for a wrapped one."""
    import hashlib
    import re

    from runtime.artifact import digest_of, file_sha256

    h = hashlib.sha256()
    for f in peer_model_files(src, fmt):
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    h.update(f"{fmt}\0{like.task}\0{digest_of(like.files)}".encode())
    work = peer.work_dir or Path(peer.model).parent / "peer-work"
    return Path(work) / "kiln-models" / f"{re.sub(r'[^A-Za-z0-9.-]+', '-', peer.label)}-{h.hexdigest()[:16]}"


def peer_model_candidates(peers: Sequence[Peer], candidates: Sequence[Candidate],
                          progress: Callable[[str], None] | None = None) -> list[tuple[Candidate, str]]:
    """Each sweep peer's model as a candidate for the latency sweep only (label "LABEL (model)"), and which
    library made it: the peer's server makes (or reuses) the model in its own Python and names its file; Kiln
    wraps the file as an artifact in the peer's work_dir (reused while the model and specs are unchanged)."""
    say = progress or (lambda m: None)
    out = []
    with PeerClients(peers) as clients:
        for peer in peers:
            like_label = peer.like or candidates[0].label
            like = Artifact.load(next(c.artifact for c in candidates if c.label == like_label))
            say(f"loading peer {peer.label}'s model for the sweep (in {peer.python})")
            info = clients.load(peer)
            if not info.get("model_path") or info.get("model_format") not in MODEL_FORMATS:
                raise BackendError(f"peer {peer.label} ({peer.kind}) named no model file Kiln can open (its answer "
                                   f"gave model_path={info.get('model_path')!r}, model_format="
                                   f"{info.get('model_format')!r}); its server is benchmarks/peer/peer_server.py")
            src, fmt = Path(info["model_path"]), info["model_format"]
            dst = peer_model_dir(peer, src, fmt, like)
            try:  # a wrapped model is reused only as it was written
                art = Artifact.load(dst) if dst.exists() else None
                changed = art.verify() if art is not None else []
                if changed:
                    raise ArtifactError(f"{dst}: files changed since it was wrapped: {', '.join(changed)}")
            except ArtifactError as e:
                raise ArtifactError(f"{e}; remove {dst} to wrap the peer's model again") from None
            if art is None:
                made = {"peer": peer.label, "kind": peer.kind, "source": str(src), "checkpoint": str(peer.model),
                        "made_by": str(info.get("backend", peer.kind))}
                art = wrap_peer_model(src, fmt, like, dst, made, info.get("versions"))
                say(f"wrapped {peer.label}'s model as a Kiln artifact: {dst}")
            backend = MODEL_FORMATS[fmt][1]
            # optimum-intel runs its models on dynamic shapes: no static batch-1 copy Kiln's OpenVINO path would add
            options = {"static_batch": 0} if backend == "openvino" else {}
            out.append((Candidate(art.path, backend, "cpu", options, f"{peer.label} (model)"),
                        f"{peer.kind}: {info.get('backend', peer.kind)}"))
    return out


def peer_versions(data_rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """environment.peer_versions: the peers' library versions; with peers in several Pythons, each Python's
    versions under its path ({python: {...}})."""
    by_python: dict[str, dict[str, str]] = {}
    for row in data_rows:
        if row.get("versions"):
            by_python.setdefault(row.get("python", ""), row["versions"])
    if not by_python:
        return None
    if len(by_python) == 1:
        return next(iter(by_python.values()))
    return by_python
