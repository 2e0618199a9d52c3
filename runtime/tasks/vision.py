"""The vision family: image classification (ViT, ResNet, ConvNeXt, MobileNet, any CNN exported as a module).

Inputs are one float32 tensor `pixel_values` [batch, channels, height, width] (NCHW; height, width and
channels fixed by the artifact's preprocessing). Raw inputs are file paths, encoded bytes, PIL images or
numpy arrays (HWC uint8 images, or an already preprocessed NCHW float32 batch). Preprocessing follows the
artifact's `meta.preprocessing` (ImagePreprocessing): decode (Pillow) -> convert the colour mode to the
model's channel count (a grayscale image given to an RGB model is converted to RGB, and an RGB image
given to a 1-channel model to grayscale) -> resize -> scale, normalize, channel order -> CHW.

numpy only at import; Pillow is imported when an image must be decoded or resized.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from runtime.errors import ArtifactError, ConfigError, SourceError, TaskError
from runtime.tasks import Family, Feed, Prediction, TaskInfo, predictions
from runtime.tasks.images import (  # noqa: F401 (re-exported: the vision family's preprocessing)
    IMAGE_SUFFIXES, ImagePreprocessing, hf_preprocessing, preprocess_images, preprocessing_of,
)
from runtime.tasks.meta import ModelMeta

if TYPE_CHECKING:
    from runtime.artifact import Artifact, TensorSpec
    from runtime.session import Session

INPUT = "pixel_values"
# patch-embedding models whose position embeddings fix the image size (CNNs take any size)
FIXED_SIZE = ("vit", "deit")
VALIDATION_BATCHES = (1, 4, 8)  # several batch sizes: an export with a frozen batch axis fails one of them


def image_shape(inputs: Sequence[TensorSpec], meta: ModelMeta) -> tuple[int, int, int]:
    """(channels, height, width): the preprocessing's, which also fixes symbolic axes of CNN inputs."""
    prep = preprocessing_of(meta)
    dims = tuple(inputs[0].shape[1:]) if inputs else ()
    for got, want in zip(dims, prep.shape):
        if isinstance(got, int) and got != want:
            raise ArtifactError(f"input {inputs[0].name!r} has shape {inputs[0].shape} but meta.preprocessing "
                                f"makes images of {prep.shape}")
    return prep.shape


class VisionFamily(Family):
    name = "vision"
    tasks = {"image-classification": TaskInfo("AutoModelForImageClassification", "logits", ("batch", "num_labels"))}
    # Hugging Face model types tested by export in tests/test_vision*.py; None: no onnxruntime graph fusion
    # (convolutions need none, and the unfused ViT graph is what static QDQ quantizes best: every MatMul)
    # "torch-module": an nn.Module exported with exporter.module_export.to_onnx_module
    model_types = {"vit": None, "deit": None, "resnet": None, "convnext": None, "mobilenet_v2": None,
                   "torch-module": None}

    # int8 from kernel to kernel: on 28x28 digits the Q/DQ pairs of the per-op plan made static int8 slower
    # than fp32 at batch 1 (exporter/qdq_plan.py)
    static_int8_plan = "int8-flow"
    size_column, item_name = "image", "images"

    def item_size(self, feed: Feed) -> Any:
        """'CxHxW' of one image (a latency table's image column; dimension 1 is channels, not a length)."""
        return "x".join(str(d) for d in next(iter(feed.values())).shape[1:])

    def batch_text(self, batch: int, feed: Feed) -> str:
        return f"{batch} image{'' if batch == 1 else 's'} of {self.item_size(feed)}"

    def serves_inputs(self, names: Sequence[str]) -> bool:
        return list(names) == [INPUT]

    def quantize_op_types(self, method: str) -> tuple[str, ...]:
        """Static int8 (QDQ, per-channel weights) quantizes convolutions and linear layers; dynamic int8
        only the linear layers (MatMul/Gemm: ViT's), since activations' ranges per batch do not pay on convs."""
        return ("Conv", "MatMul", "Gemm") if method == "static-int8" else ("MatMul", "Gemm")

    def pipeline_class(self, task: str) -> type | None:
        return ImageClassifier

    def input_specs(self, model_type: str, config: Mapping[str, Any]) -> tuple[TensorSpec, ...]:
        """pixel_values float32 [batch, channels, height, width]; height/width are fixed where the config
        fixes them (ViT's image_size) and symbolic for CNNs, whose preprocessing then sets them."""
        from runtime.artifact import TensorSpec

        if model_type not in self.model_types or model_type == "torch-module":
            raise SourceError(f"unsupported image model_type {model_type!r}; Kiln exports {', '.join(t for t in self.model_types if t != 'torch-module')}")
        channels = int(config.get("num_channels", 3))
        size = config.get("image_size") if model_type in FIXED_SIZE else None  # CNN configs' image_size is unused
        hw: tuple[Any, Any] = ("height", "width")
        if isinstance(size, int):
            hw = (size, size)
        elif isinstance(size, (list, tuple)) and len(size) == 2:
            hw = (int(size[0]), int(size[1]))
        return (TensorSpec(INPUT, "float32", ("batch", channels, *hw)),)

    def checkpoint_meta(self, model_dir: Path, config: Mapping[str, Any], task: str) -> dict[str, Any]:
        prep = hf_preprocessing(model_dir, config)
        size = config.get("image_size") if config.get("model_type") in FIXED_SIZE else None
        if isinstance(size, int) and prep.size != (size, size):
            raise SourceError(f"{model_dir}: preprocessor_config.json makes {prep.size} images but the model's "
                              f"config.json has image_size {size}")
        id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}
        return {"model_type": config["model_type"], "labels": {str(k): v for k, v in id2label.items()},
                "preprocessing": prep.to_dict(),
                "num_heads": int(config.get("num_attention_heads", 0)), "hidden_size": int(config.get("hidden_size", 0))}

    def example_feed(self, inputs: Sequence[TensorSpec], meta: ModelMeta, batch: int = 1,
                     size: int | None = None, seed: int = 0) -> Feed:
        """Seeded standard-normal pixels (the range normalized images occupy); `size` does not apply."""
        shape = image_shape(inputs, meta)
        rng = np.random.default_rng(seed)
        return {inputs[0].name: rng.standard_normal((batch, *shape)).astype(np.float32)}

    def validation_feeds(self, inputs: Sequence[TensorSpec], meta: ModelMeta, seed: int = 0) -> list[Feed]:
        return [self.example_feed(inputs, meta, b, seed=seed + i) for i, b in enumerate(VALIDATION_BATCHES)]

    def preprocess(self, artifact: Artifact, raw: Sequence[Any]) -> list[Any]:
        """Images -> CHW float32 tensors per the artifact's preprocessing (see the module docstring)."""
        return preprocess_images(raw, preprocessing_of(artifact.meta))

    def collate(self, items: Sequence[Any], input_names: Sequence[str], meta: ModelMeta) -> Feed:
        return {input_names[0]: np.stack(list(items)).astype(np.float32, copy=False)}

    def calibration_feeds(self, artifact: Artifact, raw: Sequence[Any], n: int, fixed_shape: bool = False,
                          batch_size: int = 8, seed: int = 0) -> list[Feed]:
        """n images drawn at random (seeded; image folders are sorted by label, so never the first n),
        preprocessed, in batches; fixed_shape drops a short last batch so every feed has one shape."""
        raw = list(raw)
        rng = np.random.default_rng(seed)
        chosen = [raw[int(i)] for i in rng.permutation(len(raw))[:n]]
        items = self.preprocess(artifact, chosen)
        name = artifact.inputs[0].name
        feeds = [{name: np.stack(items[s:s + batch_size])} for s in range(0, len(items), batch_size)]
        if fixed_shape and len(feeds) > 1 and len(feeds[-1][name]) != batch_size:
            feeds.pop()
        return feeds

    def postprocess(self, task: str, meta: ModelMeta, outputs: Mapping[str, np.ndarray], feed: Feed) -> list[Any]:
        return predictions(outputs[self.tasks[task].output], meta.labels)


FAMILY = VisionFamily()


class ImageClassifier:
    """Images -> Prediction(label, score, scores) per image: preprocess, batch, run, softmax.

    Takes file paths, encoded bytes, PIL images, HWC uint8 arrays, or one NCHW float32 batch already
    preprocessed. A grayscale image given to an RGB model is converted to RGB (and RGB to grayscale for a
    1-channel model), as the artifact's preprocessing says. Opens its session on construction.
    """

    tasks = tuple(VisionFamily.tasks)

    def __init__(self, artifact: Artifact | str | Path, backend: str = "auto", device: str = "cpu",
                 batch_size: int = 32, session: Session | None = None, **options: Any) -> None:
        from runtime.artifact import Artifact
        from runtime.session import open_session

        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        if self.artifact.task not in self.tasks:
            raise TaskError(f"ImageClassifier needs an artifact of task {' or '.join(self.tasks)}; "
                            f"{self.artifact.path} is {self.artifact.task!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.meta = self.artifact.model_meta
        self.preprocessing = preprocessing_of(self.meta)
        self.session = session or open_session(self.artifact, backend=backend, device=device, **options).open()
        self._input = self.session.inputs[0].name
        self._output = FAMILY.tasks[self.artifact.task].output

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ImageClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, images: Any) -> list[np.ndarray]:
        """Raw images -> preprocessed CHW float32 tensors (what the Batcher queues)."""
        return preprocess_images(images, self.preprocessing)

    def run_encoded(self, items: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocessed images -> logits, batch_size images per model call."""
        if not len(items):
            return np.zeros((0, len(self.meta.labels)), np.float32)
        outs = [self.session.run({self._input: np.stack(items[s:s + self.batch_size])})[self._output]
                for s in range(0, len(items), self.batch_size)]
        return np.concatenate(outs)

    def predict_encoded(self, items: Sequence[np.ndarray]) -> list[Prediction]:
        return predictions(self.run_encoded(items), self.meta.labels)

    def predict(self, images: Any) -> list[Prediction]:
        return self.predict_encoded(self.encode(images))

    def logits(self, images: Any) -> np.ndarray:
        return self.run_encoded(self.encode(images))

    def example_inputs(self, n: int) -> np.ndarray:
        """n preprocessed images (zeros: a mid-grey image after normalization is not needed to warm up)."""
        return np.zeros((n, *self.preprocessing.shape), np.float32)

    def warm_up_shapes(self, max_tokens: int = 0) -> int:
        """Nothing to capture: every image has the one preprocessed shape (the server calls this)."""
        return 0
