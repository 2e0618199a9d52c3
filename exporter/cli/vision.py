"""The image-classification side of `kiln finetune`, `kiln predict` and `kiln prune` (commands in their modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.errors import ConfigError, InputError

# text-loop options the image loop does not have: given for an image model, they are refused, not ignored
TEXT_ONLY = ("max_steps", "eval_every", "lora", "bf16")


def is_image_finetune(source: str, data: str) -> bool:
    """Image training when SOURCE is a packaged vision config or the data is an image folder / mnist-5k."""
    from calibration.images import is_image_source
    from exporter.vision_configs import VISION_CONFIGS

    return source in VISION_CONFIGS or is_image_source(data)


def finetune_images_cli(source: str, data: str, eval_data: str | None, out: Path, force: bool, given: dict[str, Any],
                        progress: Any) -> Any:
    from calibration.images import load_image_folder
    from exporter.stage import check_output
    from exporter.vision_finetune import ImageFinetuneConfig, finetune_images

    refused = [f"--{k.replace('_', '-')}" for k in TEXT_ONLY if given.get(k)]
    if refused:
        raise ConfigError(f"{', '.join(refused)} apply to text models; image fine-tuning takes --epochs, --lr, "
                          "--batch-size, --warmup-ratio, --patience, --seed and --device")
    keys = ("epochs", "lr", "batch_size", "warmup_ratio", "patience", "seed", "device")
    config = ImageFinetuneConfig(**{k: given[k] for k in keys if given.get(k) is not None})
    check_output(out.absolute(), force)
    train = load_image_folder(data)
    dev = load_image_folder(eval_data, train.label_names) if eval_data else None
    return finetune_images(source, train, dev, config, out, force=force, progress=progress)


def image_inputs(args: tuple[str, ...]) -> list[Path]:
    """`kiln predict` arguments for an image model: image files, or folders of them."""
    from calibration.images import load_images

    if not args:
        raise ConfigError("give image files or folders to classify: kiln predict ARTIFACT img.png [more.png | folder]")
    return [p for a in args for p in load_images(a)]


def refuse_images_for_text(args: tuple[str, ...], task: str) -> None:
    """A text model given image files: say so, rather than classify the file names as text."""
    from calibration.images import IMAGE_SUFFIXES

    images = [a for a in args if Path(a).suffix.lower() in IMAGE_SUFFIXES and Path(a).is_file()]
    if images:
        raise InputError(f"{images[0]} is an image, but this is a {task} model; it takes texts")
