"""TEST STAND-IN for Triton's onnxruntime backend library (libtriton_onnxruntime.so), which the Triton core
bundled in nvidia-pytriton lacks. It is a Triton "Python-based backend": placed at
<backend-directory>/onnxruntime/model.py, the real core runs every model whose config says
`backend: "onnxruntime"` through it, so the repository Kiln writes loads unmodified.

It runs the version folder's model.onnx with the onnxruntime package and, before serving, checks the
config's inputs and outputs (names, data types, dims, max_batch_size) against the ONNX graph, the way
the real backend refuses a config that does not fit the model. It is NOT shipped to users: it lives in
tests/ and only the tests put it on Triton's backend path.
"""

import json
from pathlib import Path

import numpy as np

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64",
             "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(int8)": "TYPE_INT8",
             "tensor(uint8)": "TYPE_UINT8", "tensor(bool)": "TYPE_BOOL"}


def check(kind, configured, graph, batched):
    by_name = {t.name: t for t in graph}
    if sorted(c["name"] for c in configured) != sorted(by_name):
        raise ValueError(f"{kind}s {sorted(c['name'] for c in configured)} != the graph's {sorted(by_name)}")
    for c in configured:
        t = by_name[c["name"]]
        if ORT_TYPES.get(t.type) != c["data_type"]:
            raise ValueError(f"{kind} {c['name']}: config {c['data_type']} != graph {t.type}")
        shape = list(t.shape[1:] if batched else t.shape)
        dims = [int(d) for d in c["dims"]]
        if len(shape) != len(dims):
            raise ValueError(f"{kind} {c['name']}: config dims {dims} != graph shape {t.shape}")
        for d, s in zip(dims, shape):
            if isinstance(s, int) and d != s and d != -1:
                raise ValueError(f"{kind} {c['name']}: config dims {dims} != graph shape {t.shape}")
        if batched and isinstance(t.shape[0], int):
            raise ValueError(f"{kind} {c['name']}: max_batch_size > 0 but the graph's first dim is fixed")


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        opts = ort.SessionOptions()
        threads = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value")
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(folder / config.get("default_model_filename", "model.onnx")), opts,
                                            providers=["CPUExecutionProvider"])
        batched = int(config.get("max_batch_size", 0)) > 0
        check("input", config["input"], self.session.get_inputs(), batched)
        check("output", config["output"], self.session.get_outputs(), batched)
        self.inputs = [c["name"] for c in config["input"]]
        self.outputs = [c["name"] for c in config["output"]]

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        # Triton's dynamic batcher hands over several requests at once: run them as one batch, as the
        # real backend does (it only joins requests whose shapes are equal).
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        sizes = [f[self.inputs[0]].shape[0] for f in feeds]
        if len({tuple(f[n].shape[1:] for n in self.inputs) for f in feeds}) == 1:
            joined = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            results = self.session.run(self.outputs, joined)
            bounds = np.cumsum([0, *sizes])
            per_request = [[r[a:b] for r in results] for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            per_request = [self.session.run(self.outputs, f) for f in feeds]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, v) for n, v in zip(self.outputs, outs)])
                for outs in per_request]
