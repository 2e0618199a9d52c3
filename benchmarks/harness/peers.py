"""The client side of a peer: benchmarks/peer/peer_server.py in the peer's own Python, spoken to in JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.harness.candidates import Peer
from runtime.errors import BackendError, ConfigError

SERVER = Path(__file__).resolve().parents[1] / "peer" / "peer_server.py"
# the README's place for the peer environment (benchmarks/peer/README.md), inside the checkout's ignored work/
DEFAULT_PEER_PYTHON = str(Path(__file__).resolve().parents[1] / "work" / "peer-venv" / "bin" / "python")


def peer_python(asked: str | None = None) -> str:
    """The peer environment's interpreter: asked, else $KILN_PEER_PYTHON, else the documented default."""
    python = asked or os.environ.get("KILN_PEER_PYTHON") or DEFAULT_PEER_PYTHON
    if not Path(python).is_file():
        raise ConfigError(f"peer Python {python} does not exist; make the peer environment as "
                          "benchmarks/peer/README.md says, or set KILN_PEER_PYTHON")
    return python


class PeerClient:
    """One peer server process for the run; every peer pipeline lives in it, run one at a time."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> PeerClient:
        env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)  # the peer sees its own packages, never Kiln's
        self.proc = subprocess.Popen([self.python, "-u", str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, text=True, env=env)
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
        return self.ask({"op": "load", "label": peer.label, "kind": peer.kind, "model": str(peer.model),
                         "work_dir": str(peer.work_dir) if peer.work_dir else None})["info"]

    def run(self, label: str) -> dict[str, Any]:
        return self.ask({"op": "run", "label": label})
