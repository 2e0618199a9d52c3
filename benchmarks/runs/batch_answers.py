"""Do answers depend on batching? Labels and scores per batch size, against one sentence at a time.

    python -m benchmarks.runs.batch_answers --artifact benchmarks/work/ft-onnx benchmarks/work/ft-int8 \
        benchmarks/work/ft-int8-static --reference benchmarks/work/ft-onnx

fp32 should not move at all (padding is masked). Dynamic int8 quantizes each activation tensor with a
scale taken from the whole batch, padding positions included, so a sentence's scores depend on what it
is batched with; this measures how much, on the labelled test sentences.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks.runs.common import write_results
from calibration.datasets import load_labelled
from runtime.pipeline import TextClassifier, softmax


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True, type=Path, nargs="+")
    ap.add_argument("--data", default="movie-snippets:test")
    ap.add_argument("--batch-sizes", default="8,32,64")
    ap.add_argument("--reference", type=Path, help="count labels that differ from this artifact's (e.g. the fp32 model)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="batch-answers")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = load_labelled(args.data)
    gold = np.asarray(data.labels)
    reference = None
    if args.reference:
        with TextClassifier(args.reference, batch_size=1) as clf:
            reference = clf.logits(data.texts).argmax(-1)
    rows = []
    for art in args.artifact:
        configs = [(1, "32")] + [(int(b), oh) for b in args.batch_sizes.split(",") for oh in ("inf", "32")]
        ref = None
        for batch, overhead in configs:
            with TextClassifier(art, batch_size=batch, call_overhead_tokens=float(overhead)) as clf:
                probs = softmax(clf.logits(data.texts).astype(np.float64))
            ref = probs if ref is None else ref
            rows.append({"artifact": art.name, "batch": batch, "overhead_tokens": overhead if batch > 1 else "-",
                         "accuracy": round(float((probs.argmax(-1) == gold).mean()), 4),
                         "labels_changed_vs_batch_1": int((probs.argmax(-1) != ref.argmax(-1)).sum()),
                         "labels_differ_from_reference": int((probs.argmax(-1) != reference).sum())
                         if reference is not None else None,
                         "max_abs_prob_diff": float(f"{np.abs(probs - ref).max():.3g}")})
            print(f"[batch_answers] {rows[-1]}", flush=True)
    notes = [f"{len(data.texts)} sentences of {args.data}; the pipeline sorts by length and pads to a multiple of 8;",
             "overhead_tokens=inf: one group of `batch` rows padded to its longest; 32: split where padding costs more",
             "than a second call (runtime.pipeline.split_by_padding, the default). max_abs_prob_diff is against",
             "batch 1 of the same artifact" + (f"; the reference for the last column is {args.reference.name} at batch 1."
                                               if args.reference else ".")]
    path = write_results(args.out, args.name, "Do answers depend on batching?", rows,
                         ["artifact", "batch", "overhead_tokens", "accuracy", "labels_changed_vs_batch_1",
                          "max_abs_prob_diff", "labels_differ_from_reference"], notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
