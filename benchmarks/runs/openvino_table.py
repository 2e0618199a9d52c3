"""The fastest CPU path (issue #15's table) in one interleaved run: onnxruntime fp32, Kiln dynamic int8,
OpenVINO fp32 / bf16 / NNCF int8, pruned + NNCF int8, against optimum's onnxruntime int8 and
optimum-intel's OpenVINO fp32 / int8 (made and, end to end, run in their own environment).

    python -m benchmarks.runs.openvino_table --ft benchmarks/work/ft --pruned benchmarks/work/prune/hf-deep \\
        --peer-python /work/peer-intel-venv/bin/python

Columns: batch 1 (real test sentences, each alone and unpadded), 32 x 128 (full-length ids), end to end on
the test split (tokenization included: Kiln's TextClassifier with length-sorted batches of 32; the peers'
transformers pipeline, batch 32, in a subprocess whose passes alternate with Kiln's), and test accuracy
alone (batch 1) and in batches of 32, since dynamic int8's answers depend on the batching.
Fraction of the int8 peak: the model's int8 multiply-accumulates at 32 x 128 (weights and attention
matmuls, counted from its shape) x 2 operations / the median time, over runtime.cpu's peak
(VNNI/AMX int8 MACs per cycle x cores x clock x 2; --macs-per-cycle and --ghz override the guesses).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.peers import wrap_peer_model
from benchmarks.latency import measure_interleaved, token_feed
from benchmarks.runs.common import model_size_mb, write_results
from calibration.datasets import load_labelled
from exporter.load import load_checkpoint
from exporter.onnx_export import OnnxConfig, to_onnx
from exporter.quantize import QuantConfig, quantize
from exporter.quantize_nncf import NncfConfig
from exporter.stage import quiet
from runtime import Artifact, TextClassifier
from runtime.backends.options import OpenVinoOptions
from runtime.cpu import cpu_info

PEER_ORT = "peer: optimum onnxruntime O2 + avx512_vnni dynamic int8"
PEER_OV32 = "peer: optimum-intel OpenVINO fp32"
PEER_OV8 = "peer: optimum-intel OpenVINO int8 (OVQuantizer)"


def log(msg: str) -> None:
    print(f"[openvino_table] {msg}", flush=True)


@dataclass
class Variant:
    artifact: Artifact
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    int8: bool = False
    kiln: bool = True
    pruned: bool = False
    e2e_peer: str = ""  # the peer pipeline that runs this model end to end (peer_e2e.py NAME)
    ablation: bool = False  # a Kiln path with one optimisation off, to show what it gives (never "the best")


# -- peers ------------------------------------------------------------------------------------------

def wrap_peer(src_dir: Path, model_file: str, ft: Artifact, dst: Path, fmt: str) -> Artifact:
    """A peer's model file(s) as a Kiln artifact with the fine-tuned model's tokenizer and specs, so the model
    itself is timed under the same harness (the peers' end-to-end pipelines run in their own environment):
    benchmarks.harness.peers.wrap_peer_model, its files named model.* as peer_e2e.py reads them."""
    if dst.exists():
        shutil.rmtree(dst)
    made = {"peer": dst.name, "kind": "benchmarks/runs/openvino_table.py peer", "source": str(src_dir / model_file)}
    return wrap_peer_model(src_dir / model_file, fmt, ft, dst, made, stem="model")


def make_peers(peer_python: str, ft: Artifact, calib_texts: list[str], work: Path) -> dict[str, Variant]:
    out = work / "peer-intel"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "calib.json").write_text(json.dumps(calib_texts))
    log("optimum peer (onnxruntime int8) in its own environment")
    subprocess.run([peer_python, "benchmarks/peer/optimum_peer.py", str(ft.path), str(out / "ort")], check=True)
    log("optimum-intel peer (OpenVINO fp32 + int8) in its own environment")
    subprocess.run([peer_python, "benchmarks/peer/optimum_intel_peer.py", str(ft.path), str(out), str(out / "calib.json")],
                   check=True)
    ort_file = next((f for f in ("model_optimized_quantized.onnx",) if (out / "ort" / f).exists()), None) \
        or next((out / "ort").glob("*quantized*.onnx")).name
    ort = wrap_peer(out / "ort", ort_file, ft, work / "peer-ort-art", "onnx")
    # peer_e2e.py's ort kind loads DIR/model.onnx with the fine-tuned config beside it
    for f in ("config.json",):
        shutil.copy2(ft.path / f, ort.path / f)
    ov32 = wrap_peer(out / "ov-fp32", "openvino_model.xml", ft, work / "peer-ov32-art", "openvino")
    ov8 = wrap_peer(out / "ov-int8", "openvino_model.xml", ft, work / "peer-ov8-art", "openvino")
    # optimum-intel compiles its models for dynamic shapes: its rows run without Kiln's static batch-1 copies
    dynamic = {"static_batch": 0}
    return {PEER_ORT: Variant(ort, "onnxruntime", int8=True, kiln=False, e2e_peer="ort"),
            PEER_OV32: Variant(ov32, "openvino", dynamic, kiln=False, e2e_peer="ov32"),
            PEER_OV8: Variant(ov8, "openvino", dynamic, int8=True, kiln=False, e2e_peer="ov8")}


class PeerPipelines:
    """peer_e2e.py in the peer environment: one timed pass over the test split per request."""

    def __init__(self, peer_python: str, work: Path, texts: list[str], labels: list[int], specs: dict[str, str]) -> None:
        data = work / "e2e-data.json"
        data.write_text(json.dumps({"texts": texts, "labels": labels}))
        args = [peer_python, "benchmarks/peer/peer_e2e.py", str(data), "32", *[f"{n}={s}" for n, s in specs.items()]]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._line()
        if "ready" not in line:
            raise RuntimeError(f"peer pipelines did not start: {line}")

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            text = self.proc.stdout.readline()
            if not text:
                raise RuntimeError("peer pipelines exited")
            if text.startswith("{"):
                return json.loads(text)

    def run(self, name: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)


# -- measurements -----------------------------------------------------------------------------------

def size_mb(art: Artifact) -> float:
    """The model's size: an OpenVINO IR's weights are in model.bin beside model.xml."""
    weights = art.model_file.with_suffix(".bin")
    return round(model_size_mb(art) + (weights.stat().st_size / 1e6 if art.format == "openvino" and weights.exists() else 0), 2)


def classifier(v: Variant, batch_size: int) -> TextClassifier:
    return TextClassifier(v.artifact, backend=v.backend, batch_size=batch_size, **v.options)


def batch1_latency(variants: dict[str, Variant], texts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """Each real sentence alone, unpadded; rounds interleave the models."""
    clfs = {n: classifier(v, 1) for n, v in variants.items()}
    feeds = {n: [c.feed_for(c.encode([t])) for t in texts] for n, c in clfs.items()}
    times: dict[str, list[float]] = {n: [] for n in variants}
    for n, c in clfs.items():  # every feed once: OpenVINO's static copies are compiled here, not in the rounds
        for f in feeds[n]:
            c.session.run(f)
    for _ in range(rounds):
        for n, c in clfs.items():
            time.sleep(0.2)  # let the previous model's spinning threads park
            for f in feeds[n]:
                t0 = time.perf_counter()
                c.session.run(f)
                times[n].append((time.perf_counter() - t0) * 1000)
    for c in clfs.values():
        c.close()
    return {n: {"median_ms": round(float(np.median(t)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3)}
            for n, t in times.items()}


def batch32_latency(variants: dict[str, Variant], rounds: int, per_round: int) -> dict[str, dict[str, float]]:
    clfs = {n: classifier(v, 32) for n, v in variants.items()}
    runs = {(n, 32, 128): (c.session, token_feed(c.session, 32, 128)) for n, c in clfs.items()}
    results = measure_interleaved(runs, warmup=2, iters=rounds * per_round, rounds=rounds)
    for c in clfs.values():
        c.close()
    return {n: {"median_ms": r.p50_ms, "p99_ms": r.p99_ms} for (n, _, _), r in results.items()}


def end_to_end(variants: dict[str, Variant], texts: list[str], labels: np.ndarray, rounds: int,
               peers: PeerPipelines | None) -> dict[str, dict[str, Any]]:
    """Sentences/s over the test split (median of rounds) and the batch-32 logits' accuracy; peers in turn."""
    clfs = {n: classifier(v, 32) for n, v in variants.items() if v.kiln}
    seconds: dict[str, list[float]] = {n: [] for n in variants if variants[n].kiln or (peers and variants[n].e2e_peer)}
    out: dict[str, dict[str, Any]] = {}
    for n, c in clfs.items():
        logits = c.logits(texts)  # warm-up pass, and the batched answers
        out[n] = {"logits": logits, "accuracy_b32": float((logits.argmax(-1) == labels).mean())}
    for _ in range(rounds):
        for n in seconds:
            if n in clfs:
                t0 = time.perf_counter()
                clfs[n].predict(texts)
                seconds[n].append(time.perf_counter() - t0)
            elif peers is not None:
                r = peers.run(variants[n].e2e_peer)
                seconds[n].append(r["seconds"])
                out[n] = {"accuracy_b32": r["accuracy"]}
    for c in clfs.values():
        c.close()
    for n, s in seconds.items():
        out.setdefault(n, {})["e2e_per_s"] = round(len(texts) / float(np.median(s)), 1)
    return out


def alone_accuracy(v: Variant, texts: list[str], labels: np.ndarray) -> tuple[float, np.ndarray]:
    with classifier(v, 1) as clf:
        logits = clf.logits(texts)
    return float((logits.argmax(-1) == labels).mean()), logits


# -- int8 work and the CPU's peak -------------------------------------------------------------------

def int8_ops(art: Artifact, batch: int, seq: int) -> float:
    """Multiply-accumulates x 2 of a BERT encoder's matmuls (Q, K, V, output, FFN in and out, and the two
    attention products) at batch x seq; per-layer heads/FFN sizes of a pruned model from its structure."""
    cfg = json.loads((art.path / "config.json").read_text())
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = hidden // heads
    structure = art.meta.get("structure") or {}
    layer_heads = structure.get("heads") or [heads] * cfg["num_hidden_layers"]
    layer_ffn = structure.get("ffn") or [cfg["intermediate_size"]] * cfg["num_hidden_layers"]
    macs_per_token = sum(4 * hidden * h * head_dim + 2 * hidden * f + 2 * seq * h * head_dim
                         for h, f in zip(layer_heads, layer_ffn))
    return 2.0 * macs_per_token * batch * seq


# -- the table --------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ft", required=True, type=Path, help="the fine-tuned hf artifact")
    ap.add_argument("--pruned", type=Path, help="a structurally pruned (+ recovered) hf artifact")
    ap.add_argument("--peer-python", help="python of the peer environment (benchmarks/peer/requirements-intel.txt)")
    ap.add_argument("--work", type=Path, default=Path("benchmarks/work/openvino"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--e2e-rounds", type=int, default=3)
    ap.add_argument("--b1-sentences", type=int, default=100)
    ap.add_argument("--test-limit", type=int, default=0, help="use only this many test sentences (0: all; smoke runs)")
    ap.add_argument("--calib-samples", type=int, default=300)
    ap.add_argument("--macs-per-cycle", type=int, help="override runtime.cpu's int8 MACs/cycle/core guess")
    ap.add_argument("--ghz", type=float, help="override the clock used for the peak")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    test, dev = load_labelled("movie-snippets:test"), load_labelled("movie-snippets:dev")
    texts, labels = list(test.texts), np.asarray(test.labels)
    if args.test_limit:
        texts, labels = texts[:args.test_limit], labels[:args.test_limit]
    ft = load_checkpoint(args.ft)
    log("exporting fp32 (unfused)")
    fp32 = to_onnx(ft, OnnxConfig(), work / "fp32", force=True, progress=quiet)
    log("quantizing: Kiln dynamic int8 (fused)")
    dyn = quantize(fp32, QuantConfig(method="dynamic-int8"), work / "dyn", force=True)

    def nncf_openvino(src: Artifact, out: Path) -> Artifact:
        feeds = src.family.calibration_feeds(src, dev.texts, args.calib_samples, batch_size=1, pad_to=64)
        return quantize(src, NncfConfig(target="openvino", subset_size=args.calib_samples, calib_data="movie-snippets:dev"),
                        out, calibration=feeds, force=True, progress=log)

    t0 = time.perf_counter()
    ov8 = nncf_openvino(fp32, work / "ov-int8")
    nncf_seconds = round(time.perf_counter() - t0, 1)
    from exporter.doctor import openvino_capabilities

    bf16 = "BF16" in (openvino_capabilities() or [])
    variants: dict[str, Variant] = {
        "onnxruntime fp32 (unfused export)": Variant(fp32, "onnxruntime"),
        "Kiln dynamic int8 (onnxruntime, fused)": Variant(dyn, "onnxruntime", int8=True),
        "OpenVINO fp32, the same ONNX file": Variant(fp32, "openvino"),
    }
    if bf16:
        variants["OpenVINO bf16, the same ONNX file"] = Variant(fp32, "openvino", {"dtype": "bfloat16"})
    variants["OpenVINO + NNCF int8 (nncf-int8 --target openvino)"] = Variant(ov8, "openvino", int8=True)
    variants["OpenVINO + NNCF int8, dynamic shapes only (static_batch=0)"] = Variant(
        ov8, "openvino", {"static_batch": 0}, int8=True, ablation=True)
    if bf16:
        variants["OpenVINO + NNCF int8, bf16 between int8 ops"] = Variant(ov8, "openvino", {"dtype": "bfloat16"}, int8=True)
    pruned_label = ""
    if args.pruned:
        src = load_checkpoint(args.pruned)
        s = src.meta.get("structure", {})
        pruned_label = f"{len(s.get('heads', []))} layers, {sum(s.get('heads', []))} heads, {sum(s.get('ffn', []))} FFN"
        log(f"pruned ({pruned_label}): export + NNCF int8 for OpenVINO")
        p32 = to_onnx(src, OnnxConfig(), work / "pruned-fp32", force=True, progress=quiet)
        variants[f"pruned ({pruned_label}) + NNCF int8, OpenVINO"] = Variant(
            nncf_openvino(p32, work / "pruned-ov-int8"), "openvino", int8=True, pruned=True)
    peers = None
    if args.peer_python:
        calib = list(np.random.default_rng(0).choice(dev.texts, min(args.calib_samples, len(dev.texts)), replace=False))
        variants |= make_peers(args.peer_python, ft, calib, work)
        peer_dirs = {"ort": f"ort:{variants[PEER_ORT].artifact.path}", "ov32": f"ov:{work / 'peer-intel' / 'ov-fp32'}",
                     "ov8": f"ov:{work / 'peer-intel' / 'ov-int8'}"}
        peers = PeerPipelines(args.peer_python, work, texts, [int(x) for x in labels], peer_dirs)

    rng = np.random.default_rng(0)
    b1_texts = [texts[i] for i in rng.choice(len(texts), min(args.b1_sentences, len(texts)), replace=False)]
    log(f"batch 1: {len(b1_texts)} real sentences x {args.rounds} rounds, {len(variants)} models interleaved")
    b1 = batch1_latency(variants, b1_texts, args.rounds)
    log("32 x 128, interleaved")
    batch32 = batch32_latency(variants, args.rounds, 2)
    log(f"end to end on {len(texts)} test sentences x {args.e2e_rounds} rounds (peers' pipelines in turn)")
    e2e = end_to_end(variants, texts, labels, args.e2e_rounds, peers)
    if peers:
        peers.close()
    log("accuracy alone (batch 1) for Kiln's models; the peers' models through the same harness")
    rows: list[dict[str, Any]] = []
    ref = e2e["onnxruntime fp32 (unfused export)"]
    acc_fp32 = ref["accuracy_b32"]
    info = cpu_info()
    macs, why = (args.macs_per_cycle, "given") if args.macs_per_cycle else info.int8_macs_per_cycle()
    peak = info.int8_peak_tops(macs, args.ghz)
    for name, v in variants.items():
        acc1, logits1 = alone_accuracy(v, texts, labels)
        r = e2e.get(name, {})
        acc32 = r.get("accuracy_b32", float("nan"))
        row: dict[str, Any] = {
            "path": name, "b1 median ms": b1[name]["median_ms"], "b1 p99 ms": b1[name]["p99_ms"],
            "32x128 median ms": batch32[name]["median_ms"], "32x128 p99 ms": batch32[name]["p99_ms"],
            "e2e sentences/s": r.get("e2e_per_s", ""), "acc alone": f"{acc1:.4f}", "acc batch 32": f"{acc32:.4f}",
            "worst drop (pts)": f"{(acc_fp32 - min(acc1, acc32)) * 100:+.2f}", "size MB": size_mb(v.artifact)}
        if "logits" in r:
            row["labels differ alone vs batched"] = int((r["logits"].argmax(-1) != logits1.argmax(-1)).sum())
        if v.int8:
            ops = int8_ops(ft if not v.pruned else load_checkpoint(args.pruned), 32, 128)
            row["% int8 peak (32x128)"] = f"{ops / (batch32[name]['median_ms'] / 1000) / (peak * 1e12) * 100:.1f}"
        rows.append(row)
    by = {r["path"]: r for r in rows}
    kiln_int8 = [n for n, v in variants.items() if v.kiln and v.int8 and not v.pruned and not v.ablation]
    best = min(kiln_int8, key=lambda n: by[n]["32x128 median ms"])
    notes = [f"Batch 1: {len(b1_texts)} random test sentences, each alone (Kiln's OpenVINO paths pad it, masked, to a "
             f"multiple of {OpenVinoOptions().static_multiple} tokens and run a copy of the model compiled for that "
             "shape; the other rows run it unpadded, "
             "the optimum-intel rows on dynamic shapes as optimum-intel does); 32 x 128: full-length ids; "
             f"both interleaved over {args.rounds} rounds. End to end: {len(texts)} test sentences, median of "
             f"{args.e2e_rounds} passes; Kiln through TextClassifier (length-sorted batches of 32), peers through "
             "transformers' pipeline (batch 32) in their own environment, passes alternating with Kiln's.",
             "acc alone: every test sentence alone (batch 1); acc batch 32: the end-to-end batches; worst drop: the worse "
             "of the two against onnxruntime fp32. Fixed-scale int8 (NNCF) should not change answers with the batching; "
             "dynamic int8 does (benchmarks/results/batch-answers.md).",
             f"NNCF int8 for OpenVINO ({args.calib_samples} dev sentences padded to 64 tokens, transformer preset, mixed): {nncf_seconds} s.",
             f"int8 peak: {macs} int8 MACs/cycle/core ({why}) x {info.cores} cores x {args.ghz or info.mhz / 1000:.2f} GHz "
             f"({'given' if args.ghz else info.mhz_source}) x 2 = {peak:.2f} TOP/s; MiniLM-L6 at 32 x 128 is "
             f"{int8_ops(ft, 32, 128) / 1e9:.1f} G int8 operations, {int8_ops(ft, 32, 128) / (peak * 1e12) * 1000:.0f} ms at the peak."]
    acceptance: dict[str, Any] = {"fastest unpruned Kiln int8": best}
    if PEER_ORT in by:
        peer, ov_peer = by[PEER_ORT], by.get(PEER_OV8)
        acceptance |= {
            "32x128 vs optimum ort int8 (>= 1.4)": round(peer["32x128 median ms"] / by[best]["32x128 median ms"], 2),
            "b1 vs optimum ort int8 (>= 1.0)": round(peer["b1 median ms"] / by[best]["b1 median ms"], 2),
            "32x128 vs optimum-intel int8 (>= 1.0)": round(ov_peer["32x128 median ms"] / by[best]["32x128 median ms"], 2)
            if ov_peer else None,
            "worst drop of that path (<= 0.5 pts)": by[best]["worst drop (pts)"],
        }
        pruned = [r for n, r in by.items() if variants[n].pruned]
        if pruned:
            acceptance["pruned 32x128 vs optimum ort int8 (>= 2.5)"] = round(
                peer["32x128 median ms"] / pruned[0]["32x128 median ms"], 2)
            acceptance["pruned worst drop (<= 1.5 pts)"] = pruned[0]["worst drop (pts)"]
        e2e_best = max(kiln_int8, key=lambda n: by[n]["e2e sentences/s"] or 0)
        if peer["e2e sentences/s"]:
            acceptance[f"end to end {e2e_best} vs optimum's int8 pipeline (>= 2.5)"] = round(
                by[e2e_best]["e2e sentences/s"] / peer["e2e sentences/s"], 2)
    notes.append("Acceptance ratios (issue #15): " + "; ".join(f"{k}: {v}" for k, v in acceptance.items()))
    cols = ["path", "b1 median ms", "b1 p99 ms", "32x128 median ms", "32x128 p99 ms", "e2e sentences/s", "acc alone",
            "acc batch 32", "worst drop (pts)", "labels differ alone vs batched", "% int8 peak (32x128)", "size MB"]
    path = write_results(args.out, "openvino", "The fastest CPU path: OpenVINO and NNCF int8 against the CPU peers",
                         rows, cols, notes, {"acceptance": acceptance, "peak_tops": peak, "macs_per_cycle": macs})
    log(f"wrote {path}")
    print(path.read_text())


if __name__ == "__main__":
    sys.exit(main())
