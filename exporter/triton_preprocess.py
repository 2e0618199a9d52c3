"""Triton Python-backend model (copied as NAME_preprocess/1/model.py): raw text -> token ids.

Runs inside Triton's Python backend, not in Kiln: it needs numpy and `tokenizers` in Triton's Python
environment and nothing from Kiln. Settings come from kiln-preprocess.json beside it (written by
exporter/triton.py from the artifact's manifest), the tokenizer from the artifact's tokenizer.json.
"""

import json
from pathlib import Path

import numpy as np


class TritonPythonModel:
    def initialize(self, args):
        from tokenizers import Tokenizer

        here = Path(args["model_repository"]) / args["model_version"]
        self.settings = json.loads((here / "kiln-preprocess.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(here / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(self.settings["max_length"]))

    def length(self, tokens):
        """sequence_length N pads every request to N (all batch together); 0 pads to a multiple of 8."""
        fixed = int(self.settings["sequence_length"])
        if fixed:
            return max(fixed, tokens)  # a longer text keeps its length (truncated at max_length only)
        multiple = int(self.settings["pad_multiple"])
        return min(-(-tokens // multiple) * multiple, int(self.settings["max_length"]))

    def encode(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        length = self.length(max(len(e.ids) for e in encodings))
        pad = int(self.settings["pad_token_id"])
        ids = np.full((len(texts), length), pad, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        types = np.zeros((len(texts), length), dtype=np.int64)
        for row, e in enumerate(encodings):
            k = min(len(e.ids), length)
            ids[row, :k], mask[row, :k], types[row, :k] = e.ids[:k], 1, e.type_ids[:k]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
            except UnicodeDecodeError as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"TEXT is not UTF-8: {e}")))
                continue
            feed = self.encode(texts)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, feed[name].astype(dtype)) for name, dtype in self.settings["inputs"].items()]))
        return responses
