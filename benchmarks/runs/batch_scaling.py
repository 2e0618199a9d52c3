"""What batching can give the model itself, on real sentences, before any HTTP: the ceiling for `kiln serve`.

    python -m benchmarks.runs.batch_scaling --artifact benchmarks/work/ft-int8

Sentences per second through TextClassifier.predict_encoded for single sentences (what the server does
with --max-batch-size 1) and for groups of N random test sentences (what the batcher hands the model
under N concurrent clients), per intra-op thread setting, timed in interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import Callable

from benchmarks.runs.common import write_results
from calibration.datasets import load_texts
from runtime.pipeline import TextClassifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True, type=Path)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--threads", default="1,2", help="intra-op thread settings to compare")
    ap.add_argument("--spinning", default="on,off", help="onnxruntime intra-op spinning settings: on, off or on,off")
    ap.add_argument("--overheads", default="inf,32",
                    help="call_overhead_tokens settings (inf: one padded group per batch, as before the split)")
    ap.add_argument("--sentences", type=int, default=256, help="sentences per configuration per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default="movie-snippets:test", help="texts to sample from")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="batch-scaling")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = load_texts(args.data)
    rng = random.Random(0)
    sample = [rng.choice(texts) for _ in range(args.sentences)]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    pipes = {(t, sp, oh): TextClassifier(args.artifact, batch_size=max(batch_sizes), threads=t, spinning=sp == "on",
                                         call_overhead_tokens=float(oh))
             for t in (int(x) for x in args.threads.split(",")) for sp in args.spinning.split(",")
             for oh in args.overheads.split(",")}
    encoded = next(iter(pipes.values())).encode(sample)
    lengths = sorted(len(e.ids) for e in encoded)
    from benchmarks.harness.timing import interleave

    def groups_of(c: tuple[int, str, str], b: int) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, len(encoded), b):
                pipes[c].predict_encoded(encoded[start:start + b])
        return run

    for pipe in pipes.values():  # warm-up: every shape class once
        pipe.predict_encoded(encoded)
    fns = {(c, b): groups_of(c, b) for c in pipes for b in batch_sizes}
    ms = interleave(fns, warmup=0, rounds=args.rounds, per_round=1,
                    on_round=lambda r, n: print(f"[batch_scaling] round {r}/{n}", flush=True))
    seconds = {key: sum(t for r in rounds for t in r) / 1000 for key, rounds in ms.items()}
    rows = []
    for (c, b), s in seconds.items():
        rate = args.sentences * args.rounds / s
        base = args.sentences * args.rounds / seconds[(c, 1)] if (c, 1) in seconds else None
        rows.append({"threads": c[0], "spinning": c[1], "overhead_tokens": c[2], "batch": b,
                     "sentences_per_s": round(rate, 1),
                     "vs_batch_1": round(rate / base, 2) if base else None,
                     "ms_per_sentence": round(1000 / rate, 3)})
    notes = [f"{args.sentences} random sentences from {args.data} (tokens: median {lengths[len(lengths) // 2]}, "
             f"max {lengths[-1]}), {args.rounds} interleaved rounds; onnxruntime.",
             "A group of N is what the batcher hands the model under N concurrent clients: sorted by length and",
             "padded to a multiple of 8; overhead_tokens=inf runs it as one group padded to its longest, a number",
             "lets runtime.pipeline.split_by_padding split it where a second model call costs less than the padding.",
             "No HTTP, no tokenizing in the timed loop."]
    path = write_results(args.out, args.name, f"Batching ceiling of the model ({args.artifact.name})", rows,
                         ["threads", "spinning", "overhead_tokens", "batch", "sentences_per_s", "vs_batch_1", "ms_per_sentence"], notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
