"""A peer pipeline server, run in the peer environment (benchmarks/peer/README.md), spoken to over stdin/stdout
in JSON lines by benchmarks/harness/peers.py. It imports nothing from Kiln: the peer's own stack only.

Requests (one JSON object per line) and answers (one line each; logs go to stderr, never stdout):
  {"op": "versions"}                                  -> {"ok": true, "versions": {...}}
  {"op": "texts", "texts": [...], "batch_size": 32}   -> {"ok": true, "n": N}
  {"op": "load", "label": L, "kind": K, "model": DIR, "work_dir": DIR|null, "calib_texts": [...]|null,
   "model_file": bool}                                -> {"ok": true, "info": {...}}
      info has model_path and model_format ("onnx" | "openvino") where the model is a file (the int8 kinds; the
      fp32 kinds when model_file asks for their export to be saved); the harness's sweep times that file.
  {"op": "run", "label": L}                           -> {"ok": true, "labels": [...], "batch_ms": [...]}
  {"op": "quit"}
A failure answers {"ok": false, "error": "..."} and the server keeps serving.

Kinds: transformers-eager (transformers.pipeline over the PyTorch model), optimum-fp32
(ORTModelForSequenceClassification exported from the checkpoint), optimum-int8 (optimum's O2 graph
optimization + ORTQuantizer avx512_vnni dynamic int8: the recipe in optimum_peer.py), optimum-intel-fp32
(OVModelForSequenceClassification exported from the checkpoint: OpenVINO fp32), optimum-intel-int8 (OVQuantizer
NNCF int8 calibrated on calib_texts: the recipe in optimum_intel_peer.py). Each runs in a transformers
text-classification pipeline, batch_size texts per call, tokenization included. The optimum kinds need
requirements.txt's environment, the optimum-intel kinds requirements-intel.txt's. Quantized models are made
once into work_dir, in a folder named after a hash of the model's files (and the calibration texts), so a
different model or calibration set never reuses a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

PIPES: dict[str, Any] = {}
STATE: dict[str, Any] = {"texts": [], "batch_size": 32}


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "optimum-intel", "openvino",
                 "nncf", "tokenizers", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def cache_key(model: Path, calib_texts: list[str] | None = None) -> str:
    """What a made model depends on: the checkpoint's files (names and bytes) and the calibration texts."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(model).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(model)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    if calib_texts is not None:
        h.update(json.dumps(calib_texts).encode())
    return h.hexdigest()[:16]


def made_once(work_dir: Path, name: str, key: str, make: Callable[[Path], None]) -> Path:
    """work_dir/name/key, made by make(staging folder) on first use; the staging folder is renamed into place
    only when make returns, so a crash leaves nothing a later run would mistake for a made model."""
    out = work_dir / name / key
    if out.is_dir():
        return out
    stage = out.with_name(f".{key}.{os.getpid()}.tmp")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        make(stage)
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def recipe(script: str, *args: str) -> None:
    """One of this folder's recipes in this Python; its output goes to stderr (stdout is the protocol)."""
    subprocess.run([sys.executable, str(Path(__file__).with_name(script)), *args], check=True, stdout=sys.stderr)


def optimum_int8_file(model: Path, work_dir: Path) -> Path:
    """optimum's O2 + avx512_vnni dynamic int8 model, made once per model in work_dir (optimum_peer.py's recipe).
    ORTQuantizer names it after its input: model_optimized_quantized.onnx."""
    out = made_once(work_dir, "optimum-int8", cache_key(model), lambda d: recipe("optimum_peer.py", str(model), str(d)))
    made = sorted(out.glob("*quantized.onnx"))
    if not made:
        raise FileNotFoundError(f"optimum_peer.py wrote no *quantized.onnx into {out}")
    return made[0]


def optimum_intel_int8_dir(model: Path, work_dir: Path, calib_texts: list[str]) -> Path:
    """optimum-intel's OVQuantizer int8 model (optimum_intel_peer.py's recipe, calibrated on calib_texts), made
    once per model and calibration set in work_dir."""
    def make(d: Path) -> None:
        (d / "calib.json").write_text(json.dumps(calib_texts))
        recipe("optimum_intel_peer.py", str(model), str(d), str(d / "calib.json"))

    out = made_once(work_dir, "optimum-intel-int8", cache_key(model, calib_texts), make) / "ov-int8"
    if not (out / "openvino_model.xml").is_file():
        raise FileNotFoundError(f"optimum_intel_peer.py wrote no openvino_model.xml into {out}")
    return out


def saved_export(net: Any, kind: str, model: Path, work_dir: Path, file_name: str) -> Path:
    """An exported (fp32) model saved once per checkpoint into work_dir, so the harness can time the file itself
    (optimum exports into a temporary folder on each load)."""
    out = made_once(work_dir, kind, cache_key(model), lambda d: net.save_pretrained(d)) / file_name
    if not out.is_file():
        raise FileNotFoundError(f"{type(net).__name__}.save_pretrained wrote no {file_name} into {out.parent}")
    return out


def load(label: str, kind: str, model: str, work_dir: str | None, calib_texts: list[str] | None = None,
         model_file: bool = False) -> dict[str, Any]:
    """The peer's pipeline under label. Its info names the model's file (model_path, model_format "onnx" or
    "openvino") where there is one: the int8 kinds' made models, and the fp32 kinds' exports when model_file
    asks for them to be saved (the sweep times the model itself); transformers-eager has none."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model)
    work = Path(work_dir or Path(model).parent / "peer-work")
    path, fmt = None, None
    if kind == "transformers-eager":
        net = transformers.AutoModelForSequenceClassification.from_pretrained(model).eval()
        engine = "torch eager"
    elif kind in ("optimum-fp32", "optimum-int8"):
        from optimum.onnxruntime import ORTModelForSequenceClassification

        fmt = "onnx"
        if kind == "optimum-fp32":
            net = ORTModelForSequenceClassification.from_pretrained(model, export=True)
            engine = "onnxruntime fp32 (optimum export)"
            path = saved_export(net, kind, Path(model), work, "model.onnx") if model_file else None
        else:
            path = optimum_int8_file(Path(model), work)
            net = ORTModelForSequenceClassification.from_pretrained(path.parent, file_name=path.name)
            engine = "onnxruntime int8 (optimum O2 + avx512_vnni dynamic)"
    elif kind in ("optimum-intel-fp32", "optimum-intel-int8"):
        from optimum.intel import OVModelForSequenceClassification

        fmt = "openvino"
        if kind == "optimum-intel-fp32":
            net = OVModelForSequenceClassification.from_pretrained(model, export=True)
            engine = "openvino fp32 (optimum-intel export)"
            path = saved_export(net, kind, Path(model), work, "openvino_model.xml") if model_file else None
        else:
            if not calib_texts:
                raise ValueError("optimum-intel-int8 calibrates on texts, and the load request sent none")
            made = optimum_intel_int8_dir(Path(model), work, calib_texts)
            net = OVModelForSequenceClassification.from_pretrained(made)
            path = made / "openvino_model.xml"
            engine = f"openvino int8 (optimum-intel OVQuantizer, NNCF, {len(calib_texts)} calibration texts)"
    else:
        raise ValueError(f"unknown peer kind {kind!r}")
    PIPES[label] = transformers.pipeline("text-classification", model=net, tokenizer=tok, device=-1)
    info = {"runtime": f"transformers.pipeline ({engine})", "backend": engine, "model": model,
            "max_length": int(min(tok.model_max_length, 512))}
    return info | ({"model_path": str(path), "model_format": fmt} if path else {})


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
        info = load(req["label"], req["kind"], req["model"], req.get("work_dir"), req.get("calib_texts"),
                    bool(req.get("model_file")))
        return {"info": info | {"versions": versions()}}
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
