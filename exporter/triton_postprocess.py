"""Triton Python-backend model (copied as NAME_postprocess/1/model.py): logits -> LABEL + softmax SCORES.

Runs inside Triton's Python backend with numpy only. Label names come from labels.txt (one per line,
written from the artifact's manifest), the same names `kiln serve` answers with.
"""

import json
from pathlib import Path

import numpy as np


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logits = config["input"][0]["name"]
        self.labels = (Path(args["model_repository"]) / "labels.txt").read_text(encoding="utf-8").splitlines()

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, self.logits).as_numpy().astype(np.float64)
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))  # softmax in float64, as TextClassifier does
            probs = e / e.sum(axis=-1, keepdims=True)
            names = np.array([[self.labels[i].encode()] for i in probs.argmax(axis=-1)], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LABEL", names), pb_utils.Tensor("SCORES", probs.astype(np.float32))]))
        return responses
