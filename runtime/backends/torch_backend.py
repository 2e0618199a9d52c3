"""PyTorch backend: the reference every export is checked against, and a GPU path without onnxruntime-gpu."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifact import MANIFEST, Artifact, digest_of, hash_files
from runtime.backends.options import TORCH_DTYPES
from runtime.errors import BackendError
from runtime.session import Session
from runtime.tasks import family_for_model_type, task_info
from runtime.tasks.text import capture_safe_mask  # noqa: F401  (its home before the task families)

DTYPES = TORCH_DTYPES  # the one list (runtime/backends/options.py)


def import_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise BackendError("the torch backend needs torch and transformers; "
                           "pip install 'modelkiln[export]', or use --backend onnxruntime") from None
    return torch


def model_dir_for(artifact: Artifact) -> Path:
    """The checkpoint directory to load: hf/torch artifacts are one; onnx artifacts point back (through their
    lineage) to the checkpoint they came from. Each hop is checked against the hash its step recorded."""
    if artifact.format in ("hf", "torch"):
        changed = artifact.verify()
        if changed:
            raise BackendError(f"{artifact.path}: {len(changed)} file(s) changed since the manifest was written "
                               f"({', '.join(changed[:3])}); the torch backend loads only what the hashes say")
        return artifact.path
    seen = {os.path.realpath(artifact.path)}
    current = artifact
    while True:
        step = next((s for s in reversed(current.lineage) if s.source), None)
        if step is None or step.source is None:
            raise BackendError(f"the torch backend needs the checkpoint {artifact.path} was made from, "
                               "but its lineage records none; use --backend onnxruntime")
        src = Path(step.source)
        if os.path.realpath(src) in seen:
            raise BackendError(
                f"the lineage of {artifact.path} loops back to {src} (an artifact written over its own source, "
                "as `kiln quantize X -o X --force` once could); re-make it from its checkpoint, "
                "or use --backend onnxruntime")
        seen.add(os.path.realpath(src))
        if not src.is_dir():
            raise BackendError(f"the torch backend needs the checkpoint {artifact.path} was made from, "
                               f"but its lineage points to {str(src)!r}, which is not there")
        check_source(src, step.inputs_sha256, current.path)
        if not (src / MANIFEST).is_file():
            if not (src / "config.json").is_file():
                raise BackendError(f"the torch backend needs the checkpoint {artifact.path} was made from, "
                                   f"but {str(src)!r} (from its lineage) is not a model directory")
            return src
        parent = Artifact.load(src)
        if parent.format in ("hf", "torch"):
            return parent.path
        current = parent


def check_source(src: Path, recorded: str | None, made: Path) -> None:
    """The source directory must hold exactly the files the step that read it hashed."""
    if recorded is None:
        raise BackendError(f"the lineage of {made} records no hash of its source {src}, so the torch backend "
                           "cannot check what it would load; re-make the artifact, or use --backend onnxruntime")
    if digest_of(hash_files(src)) != recorded:
        raise BackendError(f"{src} changed since {made} was made from it (its files no longer match the hash in "
                           f"the lineage); the torch backend will not load it: re-make the artifact from the "
                           "current checkpoint, or use --backend onnxruntime")


def load_checkpoint_model(auto: Any, model_dir: Path, trust_pickle: bool) -> Any:
    """from_pretrained with the same pickle gate as `kiln export --trust-pickle`, refusing missing weights.

    transformers fills weights a checkpoint lacks (an untrained classification head) with new random
    values on every load, so two sessions of one artifact would disagree: that is refused, not drawn.
    """
    import transformers

    from runtime.backends.torch_structure import STRUCTURE_KEY, build_structured

    safe = any((model_dir / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json"))
    pickled = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if (model_dir / n).is_file()]
    if not safe and pickled and not trust_pickle:
        raise BackendError(f"{model_dir / pickled[0]} holds pickled weights, which can run arbitrary code when "
                           "loaded; open the torch backend with trust_pickle=True if you trust its origin, "
                           "or convert it to .safetensors")
    try:
        config = transformers.AutoConfig.from_pretrained(str(model_dir))
        if getattr(config, STRUCTURE_KEY, None) is not None:
            return build_structured(auto, str(model_dir), config)  # strict, safetensors only
        kwargs = {} if trust_pickle and not safe else {"use_safetensors": True}
        model, info = auto.from_pretrained(str(model_dir), output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(f"the torch backend could not load {model_dir}: {first}") from None
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]  # buffers, not weights
    if missing:
        raise BackendError(
            f"{model_dir} has no weights for {', '.join(sorted(missing)[:4])}{' ...' if len(missing) > 4 else ''} "
            "(an untrained task head); the torch backend refuses to draw them at random on each load: "
            "fine-tune it first (`kiln finetune`), or use --backend onnxruntime (the ONNX file keeps its head)")
    return model


def graphable_forward(model: Any, inputs: dict[str, Any]) -> Any:
    """The model's forward with no host syncs (what a CUDA graph captures): the family rewrites its inputs."""
    family = family_for_model_type(getattr(model.config, "model_type", ""))
    return model(**(family.graph_safe_inputs(model, inputs) if family is not None else inputs))


class TorchSession(Session):
    """Options: runtime.backends.options.TorchOptions (dtype, threads, cuda_graphs, max_graphs, model,
    trust_pickle)."""

    backend = "torch"

    def _open(self) -> None:
        torch = import_torch()
        import transformers

        dtype = self.options.dtype
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BackendError("cuda requested but torch.cuda.is_available() is False "
                               f"(torch {torch.__version__}); use --device cpu")
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self._torch = torch
        self._graphs: dict[Any, Any] = {}  # input shapes -> (CUDA graph, static inputs, static outputs)
        self._model = self.options.model
        if self._model is None:
            transformers.utils.logging.disable_progress_bar()
            auto = getattr(transformers, task_info(self.artifact.task).auto_class)
            self._model = load_checkpoint_model(auto, model_dir_for(self.artifact), self.options.trust_pickle).eval()
        self._model.to(device=self.device, dtype=getattr(torch, dtype))

    def describe(self) -> str:
        graphs = " + CUDA graphs" if self.device == "cuda" and self.options.cuda_graphs else ""
        return f"torch {self.options.dtype} on {self.device}{graphs}"

    def _close(self) -> None:
        self._model = None
        self._graphs = {}
        if self.device == "cuda":
            self._torch.cuda.empty_cache()

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        if self.device == "cuda" and self.options.cuda_graphs:
            graphed = self._run_graph(feed)
            if graphed is not None:
                return graphed
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}
            out = self._model(**tensors)
        return {o.name: out[o.name].float().cpu().numpy() for o in self.outputs}

    def _run_graph(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Replay a CUDA graph captured for this exact shape (capturing it on first sight)."""
        torch = self._torch
        graphs = self._graphs
        key = tuple((k, v.shape) for k, v in sorted(feed.items()))
        if key not in graphs:
            if len(graphs) >= self.options.max_graphs:
                return None
            static_in = {k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            try:
                with torch.cuda.stream(side), torch.no_grad():
                    for _ in range(2):  # warm up outside the graph: lazy init must not be captured
                        graphable_forward(self._model, static_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph), torch.no_grad():
                    out = graphable_forward(self._model, static_in)
            except RuntimeError as e:  # e.g. an op that syncs with the host; never a silent eager fallback
                raise BackendError(f"CUDA graph capture failed for input shapes {dict(key)}: "
                                   f"{str(e).splitlines()[0]}; run without cuda_graphs") from None
            graphs[key] = (graph, static_in, {o.name: out[o.name] for o in self.outputs})
        graph, static_in, static_out = graphs[key]
        for k, v in feed.items():
            static_in[k].copy_(torch.from_numpy(v), non_blocking=False)
        graph.replay()
        return {k: t.float().cpu().numpy() for k, t in static_out.items()}
