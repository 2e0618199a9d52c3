"""End-to-end peer pipelines (tokenization included), driven round by round from another process so their
timed passes interleave with Kiln's. Runs in the peer environment (benchmarks/peer/requirements-intel.txt).

    PEER_PY benchmarks/peer/peer_e2e.py DATA_JSON BATCH NAME=KIND:DIR [NAME=KIND:DIR ...]
KIND: ort (optimum ORTModelForSequenceClassification; DIR/model.onnx) or ov (optimum-intel
OVModelForSequenceClassification). DATA_JSON: {"texts": [...], "labels": [int, ...]}.
Prints {"ready": [...]} once loaded; then for each NAME read on stdin, one pass of transformers'
text-classification pipeline over every text (batch BATCH) and a JSON line {"name", "seconds", "accuracy"}.
"""

import json
import sys
import time


def load(kind: str, path: str):
    from transformers import AutoTokenizer, pipeline

    if kind == "ort":
        from optimum.onnxruntime import ORTModelForSequenceClassification

        model = ORTModelForSequenceClassification.from_pretrained(path, file_name="model.onnx")
    else:
        from optimum.intel import OVModelForSequenceClassification

        model = OVModelForSequenceClassification.from_pretrained(path)
    return pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(path)), model.config.label2id


def main() -> None:
    data = json.loads(open(sys.argv[1]).read())
    batch = int(sys.argv[2])
    pipes = {}
    for spec in sys.argv[3:]:
        name, rest = spec.split("=", 1)
        kind, path = rest.split(":", 1)
        pipes[name] = load(kind, path)
        pipes[name][0](data["texts"][:batch], batch_size=batch, truncation=True)  # warm-up
    print(json.dumps({"ready": sorted(pipes)}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        pipe, label2id = pipes[name]
        t0 = time.perf_counter()
        out = pipe(data["texts"], batch_size=batch, truncation=True)
        seconds = time.perf_counter() - t0
        correct = sum(label2id[o["label"]] == y for o, y in zip(out, data["labels"]))
        print(json.dumps({"name": name, "seconds": seconds, "accuracy": correct / len(data["labels"])}), flush=True)


if __name__ == "__main__":
    main()
