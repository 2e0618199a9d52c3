"""Images -> model input for the vision family: ImagePreprocessing (what an artifact's meta.preprocessing
says), decoding with Pillow, colour-mode conversion, resize / center crop, normalization, CHW layout.

numpy only at import; Pillow is imported when an image must be decoded or resized."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.errors import ArtifactError, BackendError, ConfigError, InputError, SourceError

CHANNEL_ORDERS = ("RGB", "BGR")
RESAMPLE = ("nearest", "bilinear", "bicubic")
# Pillow's resample codes, as Hugging Face image processors record them (`resample: 2`)
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def import_pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise BackendError("decoding and resizing images needs Pillow; pip install pillow "
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
        unknown = type(e).__name__ == "UnidentifiedImageError"  # its text names a BytesIO object: say what it means
        reason = "unknown or corrupt image format" if unknown else (str(e).splitlines()[0] if str(e) else type(e).__name__)
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


# -- from a Hugging Face checkpoint ----------------------------------------------------------------

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
