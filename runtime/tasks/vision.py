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

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from runtime.errors import ArtifactError, BackendError, ConfigError, InputError, SourceError, TaskError
from runtime.tasks import Family, Feed, Prediction, TaskInfo, predictions
from runtime.tasks.meta import ModelMeta

if TYPE_CHECKING:
    from runtime.artifact import Artifact, TensorSpec
    from runtime.session import Session

INPUT = "pixel_values"
CHANNEL_ORDERS = ("RGB", "BGR")
RESAMPLE = ("nearest", "bilinear", "bicubic")
# Pillow's resample codes, as Hugging Face image processors record them (`resample: 2`)
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# patch-embedding models whose position embeddings fix the image size (CNNs take any size)
FIXED_SIZE = ("vit", "deit")
VALIDATION_BATCHES = (1, 4, 8)  # several batch sizes: an export with a frozen batch axis fails one of them
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def import_pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise BackendError("decoding and resizing images needs Pillow; pip install 'modelkiln[vision]' "
                           "(or pass HWC uint8 arrays of the model's size, or a preprocessed NCHW float32 array)") from None
    return Image


@dataclass(frozen=True)
class ImagePreprocessing:
    """How raw images become the model's input; stored in the artifact as meta.preprocessing."""

    size: tuple[int, int]  # (height, width) the model sees
    channels: int = 3  # 3: RGB (or BGR), 1: grayscale
    resize_shortest: int | None = None  # resize the short side to this, then center-crop `size`; None: resize to size
    scale: float = 1 / 255  # multiply uint8 pixels by this first
    mean: tuple[float, ...] = (0.0,)  # then (x - mean) / std per channel (one value: every channel)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "RGB"
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        size = tuple(self.size) if isinstance(self.size, (list, tuple)) else (self.size, self.size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
            raise ConfigError(f"preprocessing size must be (height, width) of positive integers, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocessing channels must be 1 or 3, got {self.channels!r}")
        if self.resize_shortest is not None and (not isinstance(self.resize_shortest, int) or self.resize_shortest < max(size)):
            raise ConfigError(f"resize_shortest must be an integer >= the crop size {max(size)}, got {self.resize_shortest!r}")
        if not self.scale > 0:
            raise ConfigError(f"preprocessing scale must be > 0, got {self.scale}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ConfigError(f"preprocessing {name} needs 1 or {self.channels} values, got {list(values)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocessing std must be > 0, got {list(self.std)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}")
        if self.resample not in RESAMPLE:
            raise ConfigError(f"resample must be one of {', '.join(RESAMPLE)}, got {self.resample!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed image."""
        return (self.channels, *self.size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["mean"], d["std"] = list(self.size), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImagePreprocessing:
        if not isinstance(d, Mapping):
            raise ArtifactError(f"meta.preprocessing must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ArtifactError(f"meta.preprocessing has unknown keys {unknown}; valid: {', '.join(cls.__dataclass_fields__)}")
        try:
            return cls(**d)
        except (ConfigError, TypeError) as e:
            raise ArtifactError(f"meta.preprocessing is invalid: {e}") from None

    @classmethod
    def from_hf(cls, processor: Mapping[str, Any], config: Mapping[str, Any]) -> ImagePreprocessing:
        """From a Hugging Face preprocessor_config.json (ViTImageProcessor, ConvNextImageProcessor, ...)."""
        channels = int(config.get("num_channels", 3))
        size = processor.get("size", config.get("image_size", 224))
        crop = processor.get("crop_size") if processor.get("do_center_crop", "crop_size" in processor) else None
        shortest = None
        if isinstance(size, Mapping) and "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            if crop:  # MobileNet, EfficientNet: resize the short side, then crop
                out = (int(crop["height"]), int(crop["width"])) if isinstance(crop, Mapping) else (int(crop),) * 2
                shortest = max(edge, *out)
            elif "crop_pct" in processor and edge < 384:  # ConvNeXt / ResNet: resize to edge / crop_pct, crop edge
                out, shortest = (edge, edge), int(edge / float(processor["crop_pct"]))
            else:
                out = (edge, edge)
        elif isinstance(size, Mapping):
            out = (int(size["height"]), int(size["width"]))
        else:
            out = (int(size), int(size))
        mean, std = (0.0,), (1.0,)
        if processor.get("do_normalize", True) and "image_mean" in processor:
            mean, std = tuple(processor["image_mean"]), tuple(processor.get("image_std", (1.0,)))
        if channels == 1:  # a 1-channel model keeps one statistic
            mean, std = mean[:1], std[:1]
        scale = float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 1.0
        return cls(size=out, channels=channels, resize_shortest=shortest, scale=scale, mean=mean, std=std,
                   resample=PIL_RESAMPLE.get(processor.get("resample", 2), "bilinear"))


def preprocessing_of(meta: Any) -> ImagePreprocessing:
    """The artifact's preprocessing (from a manifest meta dict or a ModelMeta)."""
    raw = meta.get("preprocessing") if isinstance(meta, Mapping) else getattr(meta, "extra", {}).get("preprocessing")
    if raw is None:
        raise ArtifactError("this image model's manifest has no meta.preprocessing (size, mean/std); re-export it "
                            "with `kiln export`")
    return ImagePreprocessing.from_dict(raw)


# -- decoding ---------------------------------------------------------------------------------------

def describe_input(x: Any) -> str:
    if isinstance(x, str):
        return repr(x if len(x) <= 40 else x[:37] + "...")
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} array of shape {x.shape}"
    return type(x).__name__


def open_image(x: Any, where: str) -> Any:
    """A path, bytes or PIL image -> a loaded PIL image; anything undecodable is one InputError line."""
    Image = import_pil()
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        source: Any = io.BytesIO(bytes(x))
        what = f"{where} ({len(x)} bytes)"
    else:
        path = Path(x)
        if not path.is_file():
            if isinstance(x, str) and (len(x) > 255 or path.suffix.lower() not in IMAGE_SUFFIXES):
                raise InputError(f"{where} is text ({describe_input(x)}), not an image; an image classifier takes "
                                 "image files, bytes, PIL images or numpy arrays")
            raise InputError(f"{where}: image file {str(path)!r} does not exist")
        source, what = path, f"{where} ({path})"
    try:
        img = Image.open(source)
        img.load()
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, DecompressionBombError...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{what} is not a decodable image ({reason})") from None
    return img


def convert_pil(img: Any, prep: ImagePreprocessing) -> Any:
    # mode "L" for 1-channel models, "RGB" otherwise: palette, RGBA, 16-bit and CMYK images convert too
    return img.convert("L" if prep.channels == 1 else "RGB")


def convert_array(arr: np.ndarray, prep: ImagePreprocessing, where: str) -> np.ndarray:
    """HW / HWC uint8 -> HWC with the model's channel count (gray -> RGB repeats, RGB -> gray by luma)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"{where}: got a uint8 array of shape {arr.shape}; an image is (height, width) or "
                         "(height, width, 1|3|4)")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]  # alpha is dropped, as Pillow's RGBA -> RGB does
    if prep.channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif prep.channels == 1 and arr.shape[2] == 3:  # ITU-R 601-2 luma, the transform Pillow's convert("L") uses
        arr = (arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().clip(0, 255)
        arr = arr.astype(np.uint8)[:, :, None]
    return arr


def resize(img: Any, prep: ImagePreprocessing) -> np.ndarray:
    """A PIL image -> HWC uint8 of the model's size (resize, then center-crop when resize_shortest is set)."""
    Image = import_pil()
    method = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC}[prep.resample]
    h, w = prep.size
    if prep.resize_shortest is None:
        if img.size != (w, h):
            img = img.resize((w, h), method)
    else:
        iw, ih = img.size
        k = prep.resize_shortest / min(iw, ih)
        rw, rh = max(w, round(iw * k)), max(h, round(ih * k))
        img = img.resize((rw, rh), method)
        left, top = (rw - w) // 2, (rh - h) // 2
        img = img.crop((left, top, left + w, top + h))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def normalize(hwc: np.ndarray, prep: ImagePreprocessing) -> np.ndarray:
    """HWC uint8 (model size and channels) -> CHW float32: scale, channel order, (x - mean) / std."""
    x = hwc.astype(np.float32) * np.float32(prep.scale)
    if prep.channel_order == "BGR" and x.shape[2] == 3:
        x = x[:, :, ::-1]
    x = (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess_one(x: Any, prep: ImagePreprocessing, where: str) -> np.ndarray:
    """One raw image -> its CHW float32 tensor."""
    if isinstance(x, np.ndarray):
        if x.dtype == np.float32 and x.ndim == 3:  # an already preprocessed CHW image
            if x.shape != prep.shape:
                raise InputError(f"{where}: got a float32 tensor of shape {x.shape}; the model takes preprocessed "
                                 f"images of shape {prep.shape} (channels, height, width)")
            return x
        if x.dtype != np.uint8:
            raise InputError(f"{where}: got {describe_input(x)}; give HWC uint8 images, or preprocessed float32 "
                             f"tensors of shape {prep.shape}")
        arr = convert_array(x, prep, where)
        if arr.shape[:2] != prep.size:
            Image = import_pil()
            arr = resize(Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr), prep)
        return normalize(arr, prep)
    if isinstance(x, (str, Path, bytes, bytearray, memoryview)) or type(x).__module__.startswith("PIL."):
        return normalize(resize(convert_pil(open_image(x, where), prep), prep), prep)
    raise InputError(f"{where} is {describe_input(x)}; an image classifier takes image file paths, bytes, "
                     "PIL images or numpy arrays")


def preprocess_images(images: Any, prep: ImagePreprocessing) -> list[np.ndarray]:
    """A list of raw images, or one NCHW float32 batch -> CHW float32 tensors, one per image."""
    if isinstance(images, np.ndarray):
        if images.dtype == np.float32 and images.ndim == 4:
            if images.shape[1:] != prep.shape:
                raise InputError(f"got a float32 batch of shape {images.shape}; the model takes "
                                 f"(batch, {', '.join(map(str, prep.shape))}) (NCHW, preprocessed)")
            return list(images)
        raise InputError(f"images must be a list of images or an NCHW float32 batch, got {describe_input(images)}")
    if isinstance(images, (str, bytes, Path)) or not isinstance(images, Sequence):
        raise InputError(f"images must be a list (of paths, bytes, PIL images or arrays), got {describe_input(images)}; "
                         "wrap a single image in a list")
    return [preprocess_one(x, prep, f"images[{i}]") for i, x in enumerate(images)]


# -- the family -------------------------------------------------------------------------------------

def hf_preprocessing(model_dir: Path, config: Mapping[str, Any]) -> ImagePreprocessing:
    """From the checkpoint's preprocessor_config.json; without one the preprocessing is unknown, and guessing
    it would make every prediction quietly wrong."""
    import json

    path = model_dir / "preprocessor_config.json"
    if not path.is_file():
        raise SourceError(f"{model_dir} has no preprocessor_config.json, so its image size and normalization are "
                          "unknown; save the model's image processor beside it (processor.save_pretrained(dir)), "
                          "or write one with size, image_mean, image_std and rescale_factor")
    try:
        processor = json.loads(path.read_text())
        return ImagePreprocessing.from_hf(processor, config)
    except (ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{path} is not a usable image processor config ({e})") from None


def image_specs(prep: ImagePreprocessing) -> tuple[Any, ...]:
    from runtime.artifact import TensorSpec

    return (TensorSpec(INPUT, "float32", ("batch", *prep.shape)),)


def random_pixels(spec: Any, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded inputs in the range normalized images occupy (standard normal per pixel)."""
    shape = (batch, *(d for d in spec.shape[1:]))
    if not all(isinstance(d, int) for d in shape):
        raise ArtifactError(f"input {spec.name!r} has symbolic image axes {spec.shape}; vision inputs are "
                            "(batch, channels, height, width) with fixed channels, height and width")
    return rng.standard_normal(shape).astype(np.float32)


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
