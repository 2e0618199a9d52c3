"""The fine-tuned classifier's fp32 and int8 artifacts in one Triton repository, answered by the real Triton
core (stand-in onnxruntime backend, as in tests/triton_fixtures), against Kiln's TextClassifier on the same
artifacts: labels must be equal and scores within the int8 tolerance.

    python -m benchmarks.runs.triton_answers --fp32 benchmarks/work/ft-onnx --int8 benchmarks/work/ft-int8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from calibration.datasets import load_texts
from exporter.triton import TritonConfig, to_triton
from runtime.pipeline import TextClassifier
from tests.triton_fixtures import core


def infer(url: str, model: str, text: str) -> tuple[str, np.ndarray]:
    body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out = {o["name"]: o for o in json.loads(r.read())["outputs"]}
    return out["LABEL"]["data"][0], np.asarray(out["SCORES"]["data"], dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, required=True)
    ap.add_argument("--int8", type=Path, required=True)
    ap.add_argument("--data", default="movie-snippets:test")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    texts = load_texts(args.data, "text")[: args.n]
    repo = Path(tempfile.mkdtemp(prefix="kiln-triton-answers-")) / "repo"
    to_triton([args.fp32, args.int8], TritonConfig(names=("fp32", "int8")), repo)
    with core.triton_core(repo, timeout_s=120) as c:
        for name, path in (("fp32", args.fp32), ("int8", args.int8)):
            with TextClassifier(path, backend="onnxruntime") as clf:
                want = [clf.predict([t])[0] for t in texts]
            got = [infer(c.url, name, t) for t in texts]
            order = list(want[0].scores)
            diff = max(float(np.abs(g[1] - np.array([w.scores[k] for k in order])).max()) for g, w in zip(got, want))
            same = sum(g[0] == w.label for g, w in zip(got, want))
            print(f"{name}: {same}/{len(texts)} labels equal to kiln predict; max score difference {diff:.2e}")


if __name__ == "__main__":
    main()
