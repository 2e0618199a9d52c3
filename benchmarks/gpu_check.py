"""One prepared GPU check: run the `gpu` tests (incl. a bf16-autocast fine-tuning step on CUDA), time
the MiniLM classifier on CUDA vs CPU across batch sizes, then measure what micro-batching gives a
service on each: 32 closed-loop callers of an in-process Batcher, max batch 32 vs 1 (issue 4's ratio,
without HTTP). Where TensorRT (or TensorRT-RTX) and a GPU are present, it also builds an fp16 engine and times
it; otherwise it prints "skipped: no TensorRT" (or "skipped: no GPU").

    python benchmarks/gpu_check.py [--artifact ONNX_CLASSIFIER_DIR | --checkpoint HF_ARTIFACT_DIR] [--model minilm|random]
                                   [--batch-sizes 1,8,32,128] [--serve-seconds 10] [--data LABELLED_CSV]

With --data (a labelled file, e.g. movie-snippets' test.csv) and a classifier with real weights (--checkpoint: a
fine-tuned `hf` artifact, exported here first), it also classifies the whole file end to end on every device and
dtype and reports accuracy and how many labels agree with onnxruntime fp32 on CPU: "same answers on the GPU".

Needs torch with CUDA, transformers and onnx (the project's H200 image has them, and pytest); uses
onnxruntime-gpu's CUDA provider where installed (the CPU build is reported as such, never silently used
for a 'cuda' row). Where the packaged MiniLM is not installed (its 90 MB of weights do not fit a 64 MiB
device call), it times a MiniLM-shaped model with random weights instead: latency does not depend on
the weights' values, and the table says which one ran. From this repository's root on such a machine:

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.environment import capture_environment  # noqa: E402
from benchmarks.harness import Candidate, SweepConfig, run_sweep  # noqa: E402
from benchmarks.latency import token_feed  # noqa: E402
from benchmarks.report import table  # noqa: E402
from runtime import KilnError, open_session  # noqa: E402


# all-MiniLM-L6-v2's shape (its config.json): the random stand-in costs what the real model costs
MINILM_SHAPE = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, num_labels=2)


def export_model(which: str) -> tuple[Path, str]:
    """Export the classifier to time: the packaged MiniLM, or a random-weight model of its shape."""
    from exporter.errors import SourceError
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    work = Path(tempfile.mkdtemp())
    if which == "minilm":
        try:
            return to_onnx(load_checkpoint("minilm", "text-classification"), OnnxConfig(allow_untrained=True),
                           work / "minilm-cls").path, "all-MiniLM-L6-v2 (packaged weights, untrained 2-label head)"
        except SourceError as e:
            print(f"[gpu_check] {e}; timing a random-weight model of MiniLM's shape instead", flush=True)
    import torch
    import transformers

    torch.manual_seed(0)
    src = work / "random-minilm"
    transformers.BertForSequenceClassification(transformers.BertConfig(**MINILM_SHAPE)).eval().save_pretrained(str(src))
    word_tokenizer(MINILM_SHAPE["vocab_size"]).save(str(src / "tokenizer.json"))
    return to_onnx(load_checkpoint(src, "text-classification"), OnnxConfig(), work / "random-minilm-cls").path, \
        "random weights in all-MiniLM-L6-v2's shape (6 x 384, 12 heads, FFN 1536)"


def word_tokenizer(vocab_size: int) -> Any:
    """[CLS] w1 w2 ... [SEP] over words w0..wN: tokenizes sample_texts one token per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102}
    vocab.update({f"w{i}": i for i in range(1000, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    return tok


def sample_texts(artifact: Path, n: int = 512, seed: int = 0) -> list[str]:
    """Sentences of movie-review length (6 to 50 words); real words where the tokenizer has a vocabulary."""
    import json
    import random

    rng = random.Random(seed)
    vocab = json.loads((artifact / "tokenizer.json").read_text())["model"]["vocab"]
    words = ([w for w in vocab if w.isalpha() and w.islower() and len(w) > 2]  # a real vocabulary
             or [w for w in vocab if w[:1] == "w" and w[1:].isdigit()])  # word_tokenizer's w1000, w1001, ...
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 50))) for _ in range(n)]


def batching_table(art: Path, seconds: float) -> list[dict[str, Any]]:
    """Throughput of 32 closed-loop callers through a Batcher, max batch 32 vs 1, per device."""
    from benchmarks.load import batcher_target, closed_loop
    from runtime.batched import batched_classifier

    texts = sample_texts(art)
    rows = []
    for label, opts in [("torch cuda fp16 + CUDA graphs", dict(backend="torch", device="cuda", dtype="float16",
                                                                cuda_graphs=True)),
                        ("torch cuda fp16", dict(backend="torch", device="cuda", dtype="float16")),
                        ("onnxruntime cpu", dict(backend="onnxruntime", device="cpu"))]:
        rps = {}
        for max_batch in (32, 1):
            try:
                # warm_up_shapes inside: with CUDA graphs the bucket shapes are captured before timing
                with batched_classifier(art, max_batch, 0, 4096, **opts) as bc:
                    b, clf = bc.batcher, bc.clf
                    closed_loop(batcher_target(b, clf.encode), texts, 32, min(2.0, seconds))  # warm-up
                    calls, items = b.stats.batches, b.stats.completed
                    r = closed_loop(batcher_target(b, clf.encode), texts, 32, seconds).summary()
                    mean = (b.stats.completed - items) / max(1, b.stats.batches - calls)
            except KilnError as e:
                rows.append({"config": label, "max_batch": max_batch, "throughput_rps": f"unavailable: {e}"})
                break
            rps[max_batch] = r["throughput_rps"]
            rows.append({"config": label, "max_batch": max_batch, "throughput_rps": r["throughput_rps"],
                         "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "mean_batch": round(mean, 1),
                         "errors": r["errors"] or "", "on/off": round(rps[32] / rps[1], 2) if max_batch == 1 else ""})
    return rows


def accuracy_table(art: Path, data: Path) -> list[dict[str, Any]]:
    """The whole labelled file end to end (tokenization included, the pipeline's batching), per device/dtype:
    accuracy, macro-F1, sentences/s and the share of labels equal to onnxruntime fp32 on CPU."""
    import time

    import numpy as np

    from calibration.sources import labelled_for
    from runtime.artifact import Artifact
    from runtime.pipeline import pipeline_for

    a = Artifact.load(art)
    labelled = labelled_for(a.task, str(data), "text", "label", [a.labels[i] for i in sorted(a.labels)])
    gold = np.asarray(labelled.labels)
    rows, ref = [], None
    for label, opts in [("onnxruntime cpu fp32 (reference)", dict(backend="onnxruntime", device="cpu")),
                        ("torch cuda fp32", dict(backend="torch", device="cuda")),
                        ("torch cuda fp16", dict(backend="torch", device="cuda", dtype="float16")),
                        ("torch cuda bf16", dict(backend="torch", device="cuda", dtype="bfloat16")),
                        ("torch cuda fp16 + CUDA graphs", dict(backend="torch", device="cuda", dtype="float16",
                                                               cuda_graphs=True))]:
        try:
            with pipeline_for(a, batch_size=32, **opts) as clf:
                clf.logits(labelled.inputs[:64])  # warm-up (and graph capture) outside the timing
                passes = []
                for _ in range(2):  # the first pass meets each batch shape for the first time, the second does not
                    started = time.perf_counter()
                    logits = clf.logits(labelled.inputs)
                    passes.append(time.perf_counter() - started)
        except KilnError as e:
            rows.append({"config": label, "accuracy": f"unavailable: {e}"})
            continue
        pred = logits.argmax(-1)
        ref = pred if ref is None else ref
        m = a.family.metric(pred, gold, len(a.labels))
        rows.append({"config": label, "n": m["n"], "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
                     "sentences_per_s": round(len(gold) / passes[0], 1),
                     "second_pass_per_s": round(len(gold) / passes[1], 1),
                     "labels_equal_to_reference": f"{int((pred == ref).sum())}/{len(gold)}"})
    return rows


def engine_table(art: Path, batch_sizes: list[int], seq_len: int, iters: int) -> list[dict[str, Any]] | str:
    """Build an fp16 TensorRT engine from the ONNX artifact, check it against onnxruntime, time it."""
    from exporter.tensorrt import BuildConfig, to_tensorrt
    from runtime.artifact import Artifact
    from runtime.backends.trt import detect_gpu, installed_flavours

    if not installed_flavours():
        return "skipped: no TensorRT"
    if detect_gpu() is None:
        return "skipped: no GPU"
    onnx_art = Artifact.load(art)
    try:
        engine = to_tensorrt(onnx_art, BuildConfig(precision="fp16"), Path(tempfile.mkdtemp()) / "engine")
        with open_session(engine, device="cuda") as s, open_session(onnx_art) as ref:
            feed = token_feed(s, 4, min(seq_len, 64))
            diff = max(float(abs(s.run(feed)[k] - ref.run(feed)[k]).max()) for k in s.run(feed))
        sweep = SweepConfig(tuple(b for b in batch_sizes if b <= 32),  # the default profile's largest batch
                            (seq_len,), warmup=5, rounds=5, per_round=max(1, iters // 5))
        return [{"config": f"{r['backend']} fp16 (max abs diff vs onnxruntime {diff:.1e})"} | r
                for r in run_sweep([Candidate(engine.path, device="cuda")], sweep)]
    except KilnError as e:  # e.g. an RTX engine on a GPU it does not target: the refusal is the result
        return f"unavailable: {e}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path, help="an ONNX text-classification artifact (default: export minilm)")
    ap.add_argument("--checkpoint", type=Path, help="an `hf` text-classification artifact to export here and time")
    ap.add_argument("--data", type=Path, help="a labelled CSV (text,label): accuracy per device and dtype")
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--seq-len", type=int, default=None, help="default: min(128, the artifact's max length)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--serve-seconds", type=float, default=10, help="per batching run (0: skip the batching table)")
    ap.add_argument("--model", choices=["minilm", "random"], default="minilm",
                    help="without --artifact: the packaged MiniLM (random-weight MiniLM shape when not installed)")
    args = ap.parse_args()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=Path(__file__).parents[1])
    art, model = args.artifact, str(args.artifact)
    if art is None and args.checkpoint is not None:
        from exporter.load import load_checkpoint
        from exporter.onnx_export import OnnxConfig, to_onnx

        art = to_onnx(load_checkpoint(args.checkpoint), OnnxConfig(), Path(tempfile.mkdtemp()) / "checkpoint-onnx").path
        model = f"{args.checkpoint} (exported here)"
    if art is None:
        try:
            art, model = export_model(args.model)
        except (ImportError, KilnError) as e:
            sys.exit(f"cannot export the default model here ({e}); export on a CPU machine and pass --artifact DIR")
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("gpu_check needs torch with CUDA")

    if args.seq_len is None:
        from runtime.artifact import Artifact

        args.seq_len = min(128, Artifact.load(art).model_meta.max_length or 128)
    # every configuration that opens here is timed by the harness's one sweep, in interleaved rounds
    configs = [("torch cuda fp16", "torch", "cuda", {"dtype": "float16"}),
               ("torch cuda fp16 + CUDA graphs", "torch", "cuda", {"dtype": "float16", "cuda_graphs": True}),
               ("torch cuda bf16", "torch", "cuda", {"dtype": "bfloat16"}),
               ("torch cuda fp32", "torch", "cuda", {}),
               ("onnxruntime cuda", "onnxruntime", "cuda", {}),
               ("onnxruntime cpu", "onnxruntime", "cpu", {}),
               ("torch cpu fp32", "torch", "cpu", {})]
    rows, usable = [], []
    for label, backend, device, opts in configs:
        try:
            with open_session(art, backend=backend, device=device, **opts):
                usable.append(Candidate(art, backend, device, opts, label=label))
        except KilnError as e:
            rows.append({"config": label, "backend": f"unavailable: {e}"})
    sizes = tuple(int(x) for x in args.batch_sizes.split(","))
    per_round = max(1, args.iters // 5)
    for group, batches in (([c for c in usable if c.device == "cuda"], sizes),
                           ([c for c in usable if c.device == "cpu"], tuple(b for b in sizes if b <= 32))):
        if group and batches:
            sweep = SweepConfig(batches, (args.seq_len,), warmup=5, rounds=5, per_round=per_round)
            rows += [{"config": r["candidate"]} | r for r in run_sweep(group, sweep)]
    print(table(rows, ["config", "backend", "batch", "seq_len", "p50_ms", "p99_ms", "throughput"]))
    engines = engine_table(art, [int(x) for x in args.batch_sizes.split(",")], args.seq_len, args.iters)
    print("\nTensorRT engine: " + (engines if isinstance(engines, str) else "\n" + table(
        engines, ["config", "batch", "seq_len", "p50_ms", "p99_ms", "throughput"])))
    if args.serve_seconds > 0:
        print(f"\nmicro-batching: 32 closed-loop callers, in-process Batcher, {args.serve_seconds:g} s per run")
        print(table(batching_table(art, args.serve_seconds),
                    ["config", "max_batch", "throughput_rps", "p50_ms", "p99_ms", "mean_batch", "errors", "on/off"]))
    if args.data is not None:
        print(f"\nend to end on {args.data}: accuracy per device and dtype (batches of 32)")
        print(table(accuracy_table(art, args.data),
                    ["config", "n", "accuracy", "macro_f1", "sentences_per_s", "second_pass_per_s",
                     "labels_equal_to_reference"]))
    env = capture_environment()
    print(f"\nmodel: {model}\n{env['gpus']} | {env['cpu']} | torch {env['versions'].get('torch')} | "
          f"gpu tests exit {tests.returncode}")
    sys.exit(tests.returncode)


if __name__ == "__main__":
    main()
