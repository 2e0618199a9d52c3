"""kiln prune on a ViT: attention heads and FFN neurons scored on images and physically removed by the same
structured pruning as text encoders; the pruned checkpoint reloads, exports and validates like any other."""

from __future__ import annotations

import json

import pytest

from runtime.errors import ConfigError
from tests.test_vision import LABELS, build_hf_vision, shapes


@pytest.fixture(scope="module")
def vit_and_images(tmp_path_factory):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path_factory.mktemp("vitprune")
    folder = root / "images"
    imgs, labels = shapes(24, seed=4)
    for i, (img, k) in enumerate(zip(imgs, labels)):
        (folder / LABELS[k]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / LABELS[k] / f"{i:03d}.png")
    return build_hf_vision(root / "vit", "vit"), folder


def test_vit_heads_and_ffn_are_removed_and_the_model_exports(vit_and_images, tmp_path):
    from calibration.images import load_image_folder
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from exporter.prune import PruneConfig, prune

    src_dir, folder = vit_and_images
    src = load_checkpoint(src_dir, "image-classification")
    data = load_image_folder(folder, LABELS)
    pruned = prune(src, PruneConfig(heads=0.5, ffn=0.5, samples=12, batch_size=6), tmp_path / "p", train=data, dev=data)
    m = pruned.lineage[-1].metrics
    assert sum(m["structure"]["heads"]) == 4 and sum(m["structure"]["ffn"]) == 64  # of 8 heads, 128 neurons
    assert m["parameters_after"] < m["parameters_before"] and "accuracy" in m["eval"]
    assert pruned.meta["structure"]["heads"] == m["structure"]["heads"]
    assert json.loads((pruned.path / "config.json").read_text())["kiln_structure"]["ffn"] == m["structure"]["ffn"]
    art = to_onnx(pruned, OnnxConfig(), tmp_path / "onnx")  # reloads the smaller layers, validates against torch
    assert art.lineage[-1].metrics["validation"]["outputs"]["logits"]["max_abs"] < 1e-4


def test_vit_prune_options_that_apply_to_text_only_are_refused(vit_and_images, tmp_path):
    from calibration.images import load_image_folder
    from exporter.load import load_checkpoint
    from exporter.prune import PruneConfig, prune

    src_dir, folder = vit_and_images
    src = load_checkpoint(src_dir, "image-classification")
    data = load_image_folder(folder, LABELS)
    with pytest.raises(ConfigError, match="--layers .* for a ViT use --heads/--ffn"):
        prune(src, PruneConfig(layers=1), tmp_path / "a", train=data)
    with pytest.raises(ConfigError, match="pass --data IMAGE_FOLDER"):
        prune(src, PruneConfig(heads=0.5), tmp_path / "b")


def test_kiln_prune_on_a_vit_with_an_image_folder(vit_and_images, tmp_path):
    from tests.test_cli import run

    src_dir, folder = vit_and_images
    result = run("prune", src_dir, "--heads", "0.5", "--data", folder, "--eval", folder, "--samples", "12",
                 "-o", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert "heads per layer" in result.output and "eval: accuracy" in result.output


def test_vit_unstructured_prune_reloads(vit_and_images, tmp_path):
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from exporter.prune import PruneConfig, prune

    src = load_checkpoint(vit_and_images[0], "image-classification")
    pruned = prune(src, PruneConfig(kind="unstructured", sparsity=0.5), tmp_path / "p")
    assert 0.45 < pruned.lineage[-1].metrics["sparsity"] <= 0.55
    from exporter.load import load_torch_model

    q = load_torch_model(pruned).vit.layers[0].attention.q_proj.weight  # the zeros survive saving and loading
    assert float((q == 0).float().mean()) > 0.3
    assert to_onnx(pruned, OnnxConfig(), tmp_path / "onnx").lineage[-1].metrics["validation"]["batches"] == 3
