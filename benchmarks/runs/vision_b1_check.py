"""Batch-1 latency of the vision artifacts with 3 vs 50 timed calls per interleaved round (harness loop)."""
from runtime import Artifact
from benchmarks.runs.common import interleaved_latency
W = "benchmarks/work/vision-v2/"
names = ["resnet-tiny-mnist-fp32", "resnet-tiny-mnist-int8", "vit-tiny-mnist-fp32", "vit-tiny-mnist-int8"]
arts = {n: Artifact.load(W + n) for n in names}
for pr in (3, 50):
    lat = interleaved_latency(arts, [(1, 0)], rounds=10, per_round=pr)
    print(f"per_round={pr}: " + ", ".join(f"{n} {v['1x0']['median_ms']} ms" for n, v in lat.items()))
