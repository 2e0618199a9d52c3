"""Physically smaller encoder layers (BERT-style text encoders, ViT): build a model whose per-layer head /
FFN counts differ.

A structurally pruned checkpoint stores `kiln_structure = {"heads": [...], "ffn": [...]}` in its
config.json; Hugging Face's from_pretrained cannot build such a model (it has one head count and
one FFN size for all layers), so every loader in Kiln shrinks a from_config model to that structure
before loading the weights. Torch-only; imported by the torch backend and the exporter.
"""

from __future__ import annotations

from typing import Any, Sequence

STRUCTURE_KEY = "kiln_structure"


# Where each part of an encoder layer lives, per layer layout (architecture knowledge as data). "bert":
# BertLayer and the text encoders built like it; "vit": transformers 5's ViTLayer (attention.q_proj, mlp.fc1).
# heads: attributes holding the layer's head count; width: attributes holding heads x head size.
LAYER_PARTS: dict[str, dict[str, Any]] = {
    "bert": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
             "heads": ("attention.self.num_attention_heads",), "width": ("attention.self.all_head_size",)},
    "vit": {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "o": "attention.o_proj",
            "ffn_in": "mlp.fc1", "ffn_out": "mlp.fc2", "heads": ("attention.num_attention_heads",), "width": ()},
}


def layer_layout(layer: Any) -> str:
    return "vit" if hasattr(layer, "mlp") and hasattr(getattr(layer, "attention", None), "q_proj") else "bert"


def part(layer: Any, name: str) -> Any:
    """The layer's module for part `name` (q, k, v, o, ffn_in, ffn_out)."""
    obj = layer
    for attr in LAYER_PARTS[layer_layout(layer)][name].split("."):
        obj = getattr(obj, attr)
    return obj


def _set(layer: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    obj = layer
    for attr in parents:
        obj = getattr(obj, attr)
    setattr(obj, last, value)


def set_part(layer: Any, name: str, module: Any) -> None:
    _set(layer, LAYER_PARTS[layer_layout(layer)][name], module)


def encoder_layers(model: Any) -> list[Any]:
    base = getattr(model, model.base_model_prefix, model)
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):
        return list(base.encoder.layer)
    if hasattr(base, "layers") and layer_layout(base.layers[0]) == "vit":  # ViT in transformers 5
        return list(base.layers)
    raise ValueError(f"structured pruning supports BERT-style encoders (encoder.layer) and ViT; got {type(model).__name__}")


def head_size(model: Any) -> int:
    return int(model.config.hidden_size // model.config.num_attention_heads)


def _resize(linear: Any, n: int, dim: int) -> Any:
    """A new, uninitialised-size nn.Linear with n outputs (dim 0) or n inputs (dim 1)."""
    import torch

    w = linear.weight
    out_f, in_f = (n, w.shape[1]) if dim == 0 else (w.shape[0], n)
    return torch.nn.Linear(in_f, out_f, bias=linear.bias is not None, dtype=w.dtype, device=w.device)


def _select(linear: Any, keep: Sequence[int], dim: int) -> Any:
    """A new nn.Linear keeping rows (dim 0: outputs) or columns (dim 1: inputs) of `linear`."""
    import torch

    new = _resize(linear, len(keep), dim)
    idx = torch.as_tensor(list(keep), dtype=torch.long, device=linear.weight.device)
    with torch.no_grad():
        new.weight.copy_(linear.weight.index_select(dim, idx))
        if linear.bias is not None:
            new.bias.copy_(linear.bias.index_select(0, idx) if dim == 0 else linear.bias)
    return new


def shrink_layer_(layer: Any, d: int, heads: Sequence[int] | int, neurons: Sequence[int] | int) -> None:
    """Keep the given head / neuron indices (or, given counts, just resize for loading weights)."""
    qkv = ("q", "k", "v")
    if isinstance(heads, int):
        n_heads = heads
        for name in qkv:
            set_part(layer, name, _resize(part(layer, name), heads * d, 0))
        set_part(layer, "o", _resize(part(layer, "o"), heads * d, 1))
    else:
        rows = [h * d + j for h in sorted(heads) for j in range(d)]
        n_heads = len(heads)
        for name in qkv:
            set_part(layer, name, _select(part(layer, name), rows, 0))
        set_part(layer, "o", _select(part(layer, "o"), rows, 1))
    layout = LAYER_PARTS[layer_layout(layer)]
    for path in layout["heads"]:
        _set(layer, path, n_heads)
    for path in layout["width"]:
        _set(layer, path, n_heads * d)
    if isinstance(neurons, int):
        set_part(layer, "ffn_in", _resize(part(layer, "ffn_in"), neurons, 0))
        set_part(layer, "ffn_out", _resize(part(layer, "ffn_out"), neurons, 1))
    else:
        keep = sorted(neurons)
        set_part(layer, "ffn_in", _select(part(layer, "ffn_in"), keep, 0))
        set_part(layer, "ffn_out", _select(part(layer, "ffn_out"), keep, 1))


def apply_structure_(model: Any, structure: dict[str, list[int]]) -> None:
    """Resize a freshly built model to the stored per-layer counts (weights are loaded afterwards)."""
    d = head_size(model)
    for layer, h, f in zip(encoder_layers(model), structure["heads"], structure["ffn"]):
        shrink_layer_(layer, d, int(h), int(f))


def from_pretrained_any(auto_class: Any, model_dir: str, **kwargs: Any) -> Any:
    """auto_class.from_pretrained, or the structured build when config.json carries kiln_structure."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    if getattr(config, STRUCTURE_KEY, None) is None:
        model, info = auto_class.from_pretrained(model_dir, output_loading_info=True, **kwargs)
        # parameters initialised at random because the checkpoint lacks them (buffers such as position_ids aside);
        # a new head asked for with num_labels is expected, and the caller decides whether the rest is
        names = {n for n, _ in model.named_parameters()}
        model.kiln_untrained = [k for k in info.get("missing_keys", []) if k in names]
        return model
    return build_structured(auto_class, model_dir, config, **kwargs)


def build_structured(auto_class: Any, model_dir: str, config: Any, **kwargs: Any) -> Any:
    """from_config + apply_structure_ + load the safetensors weights strictly."""
    from safetensors.torch import load_file

    kwargs.pop("num_labels", None)
    kwargs.pop("ignore_mismatched_sizes", None)
    model = auto_class.from_config(config, **kwargs)
    apply_structure_(model, getattr(config, STRUCTURE_KEY))
    missing, unexpected = model.load_state_dict(load_file(f"{model_dir}/model.safetensors"), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # a buffer, not a weight
    if missing or unexpected:
        raise ValueError(f"{model_dir}: weights do not match {STRUCTURE_KEY}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model
