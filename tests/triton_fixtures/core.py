"""Start the real Triton core that nvidia-pytriton bundles, on 127.0.0.1, with a Kiln repository.

Test helper only (also used by benchmarks/runs/triton_table.py). What runs is Triton's own `tritonserver`
binary (config parsing, scheduling, dynamic batching, ensembles, HTTP/gRPC, metrics) and its Python
backend; the onnxruntime backend library is not in that wheel, so `backends/onnxruntime/model.py` beside
this file stands in for it (see its docstring).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).parent
STAND_IN = HERE / "backends" / "onnxruntime" / "model.py"


def pytriton_dir() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def why_not() -> str | None:
    """None when the core can start here; else the reason (for pytest.skip)."""
    root = pytriton_dir()
    if root is None:
        return "nvidia-pytriton (which bundles the Triton core) is not installed: pip install 'modelkiln[triton]'"
    if not sys.platform.startswith("linux"):
        return f"the Triton core in nvidia-pytriton runs on Linux only, not {sys.platform}"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not (root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub").is_file():
        return f"nvidia-pytriton has no Python-backend stub for Python {version}"
    for module in ("onnxruntime", "tokenizers", "tritonclient.http"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"{module} is not installed"
    return None


def backend_dir(dst: Path) -> Path:
    """backends/python (the bundled Python backend + the stub for this interpreter) and the stand-in."""
    root = pytriton_dir()
    assert root is not None
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copytree(root / "tritonserver" / "backends" / "python", dst / "python")
    shutil.copy2(root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                 dst / "python" / "triton_python_backend_stub")
    (dst / "onnxruntime").mkdir()
    shutil.copy2(STAND_IN, dst / "onnxruntime" / "model.py")
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    """The stub embeds libpython: without this it picks up the system's libpython and crashes; it must load
    the running interpreter's own library (and find this environment's packages through PATH)."""
    env = dict(os.environ)
    root = pytriton_dir()
    assert root is not None
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


@dataclass(frozen=True)
class Core:
    url: str  # HTTP, KServe v2
    grpc: str  # host:port
    metrics: str  # Prometheus text at this URL


@contextlib.contextmanager
def triton_core(repository: Path, timeout_s: float = 60.0, log: Path | None = None,
                extra_args: tuple[str, ...] = ()) -> Iterator[Core]:
    """Run tritonserver on the repository; yield its addresses once /v2/health/ready answers 200."""
    root = pytriton_dir()
    assert root is not None, why_not()
    work = Path(tempfile.mkdtemp(prefix="kiln-triton-"))
    backends = backend_dir(work / "backends")
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = log or work / "tritonserver.log"
    cmd = [str(root / "tritonserver" / "bin" / "tritonserver"), f"--model-repository={repository}",
           f"--backend-directory={backends}", f"--cache-directory={root / 'tritonserver' / 'caches'}",
           "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
           "--allow-metrics=true", "--allow-gpu-metrics=false", f"--metrics-port={metrics}",
           "--metrics-address=127.0.0.1", "--strict-readiness=true", "--exit-on-error=true", "--log-verbose=0",
           f"--backend-config=python,shm-default-byte-size={1 << 22}", *extra_args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environment(), cwd=work)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready after {timeout_s}s:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield Core(url, f"127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}/metrics")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
