"""The client side of a peer: benchmarks/peer/peer_server.py in the peer's own Python, spoken to in JSON lines.
Peers may live in several environments (optimum's and optimum-intel's need different transformers): each
distinct Python gets its own server process (PeerClients)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from benchmarks.harness.candidates import CALIBRATED_KINDS, Peer
from runtime.errors import BackendError, ConfigError

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
    drawn as benchmarks/runs/openvino_table.py draws optimum-intel's (so the two give the same peer model)."""
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
                         "calib_texts": calibration_texts(peer)})["info"]
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
