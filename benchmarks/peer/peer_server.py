"""A peer pipeline server, run in the peer environment (benchmarks/peer/README.md), spoken to over stdin/stdout
in JSON lines by benchmarks/harness/peers.py. It imports nothing from Kiln: the peer's own stack only.

Requests (one JSON object per line) and answers (one line each; logs go to stderr, never stdout):
  {"op": "versions"}                                  -> {"ok": true, "versions": {...}}
  {"op": "texts", "texts": [...], "batch_size": 32}   -> {"ok": true, "n": N}
  {"op": "load", "label": L, "kind": K, "model": DIR, "work_dir": DIR|null}
                                                       -> {"ok": true, "info": {...}}
  {"op": "run", "label": L}                           -> {"ok": true, "labels": [...], "batch_ms": [...]}
  {"op": "quit"}
A failure answers {"ok": false, "error": "..."} and the server keeps serving.

Kinds: transformers-eager (transformers.pipeline over the PyTorch model), optimum-fp32
(ORTModelForSequenceClassification exported from the checkpoint), optimum-int8 (optimum's O2 graph
optimization + ORTQuantizer avx512_vnni dynamic int8: the recipe in optimum_peer.py). Each runs in a
transformers text-classification pipeline, batch_size texts per call, tokenization included.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

PIPES: dict[str, Any] = {}
STATE: dict[str, Any] = {"texts": [], "batch_size": 32}


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "tokenizers", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def optimum_int8_file(model: Path, work_dir: Path) -> Path:
    """optimum's O2 + avx512_vnni dynamic int8 model, made once per work_dir (optimum_peer.py's recipe).
    ORTQuantizer names it after its input: model_optimized_quantized.onnx."""
    out = work_dir / "optimum-int8"
    made = sorted(out.glob("*quantized.onnx"))
    if not made:
        import subprocess

        subprocess.run([sys.executable, str(Path(__file__).with_name("optimum_peer.py")), str(model), str(out)],
                       check=True, stdout=sys.stderr)
        made = sorted(out.glob("*quantized.onnx"))
    if not made:
        raise FileNotFoundError(f"optimum_peer.py wrote no *quantized.onnx into {out}")
    return made[0]


def load(label: str, kind: str, model: str, work_dir: str | None) -> dict[str, Any]:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model)
    if kind == "transformers-eager":
        net = transformers.AutoModelForSequenceClassification.from_pretrained(model).eval()
        engine = "torch eager"
    elif kind in ("optimum-fp32", "optimum-int8"):
        from optimum.onnxruntime import ORTModelForSequenceClassification

        if kind == "optimum-fp32":
            net = ORTModelForSequenceClassification.from_pretrained(model, export=True)
            engine = "onnxruntime fp32 (optimum export)"
        else:
            qfile = optimum_int8_file(Path(model), Path(work_dir or Path(model).parent / "peer-work"))
            net = ORTModelForSequenceClassification.from_pretrained(qfile.parent, file_name=qfile.name)
            engine = "onnxruntime int8 (optimum O2 + avx512_vnni dynamic)"
    else:
        raise ValueError(f"unknown peer kind {kind!r}")
    PIPES[label] = transformers.pipeline("text-classification", model=net, tokenizer=tok, device=-1)
    return {"runtime": f"transformers.pipeline ({engine})", "backend": engine, "model": model,
            "max_length": int(min(tok.model_max_length, 512))}


def run(label: str) -> dict[str, Any]:
    pipe, texts, bs = PIPES[label], STATE["texts"], STATE["batch_size"]
    labels, batch_ms = [], []
    for start in range(0, len(texts), bs):
        chunk = texts[start:start + bs]
        t0 = time.perf_counter()
        # the same truncation Kiln's tokenizer applies (the model's own limit)
        out = pipe(chunk, batch_size=bs, truncation=True)
        batch_ms.append((time.perf_counter() - t0) * 1000)
        labels += [o["label"] for o in out]
    return {"labels": labels, "batch_ms": batch_ms}


def handle(req: dict[str, Any]) -> dict[str, Any]:
    op = req.get("op")
    if op == "versions":
        return {"versions": versions()}
    if op == "texts":
        STATE["texts"], STATE["batch_size"] = list(req["texts"]), int(req.get("batch_size", 32))
        return {"n": len(STATE["texts"])}
    if op == "load":
        return {"info": load(req["label"], req["kind"], req["model"], req.get("work_dir")) | {"versions": versions()}}
    if op == "run":
        return run(req["label"])
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "quit":
            break
        try:
            answer = {"ok": True} | handle(req)
        except Exception as e:  # the harness reports it as one line; the trace goes to stderr for the curious
            traceback.print_exc(file=sys.stderr)
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
