import numpy as np
import pytest
import torch

from calibration.datasets import load_labelled
from exporter.finetune import FinetuneConfig, finetune, with_lora
from exporter.load import load_checkpoint, load_torch_model
from exporter.onnx_export import OnnxConfig, to_onnx
from exporter.prune import PruneConfig, choose_removed, prune
from runtime import Artifact, ConfigError, TextClassifier, open_session
from tests.conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return (load_labelled(write_csv(d / "train.csv", sentiment_rows(96))),
            load_labelled(write_csv(d / "dev.csv", sentiment_rows(32, seed=1))))


@pytest.fixture(scope="module")
def tuned(tiny_bert, data, tmp_path_factory):
    cfg = FinetuneConfig(epochs=10, lr=3e-3, batch_size=16, max_length=16, patience=None)
    return finetune(load_checkpoint(tiny_bert, "text-classification"), data[0], data[1], cfg,
                    tmp_path_factory.mktemp("ft") / "ft", show_bar=False)


def test_finetune_learns_and_records_lineage(tuned):
    art = Artifact.load(tuned.path)
    step = art.lineage[-1]
    assert step.stage == "finetune" and step.config["lr"] == 3e-3
    assert step.metrics["eval"]["accuracy"] >= 0.9  # the task is trivially learnable
    assert len(step.metrics["data"]["train"]["sha256"]) == 64 and step.metrics["data"]["train"]["n"] == 96
    assert art.meta["max_length"] == 16 and art.labels == {0: "negative", 1: "positive"}
    # the hf artifact runs in the torch backend and exports with its lineage carried on
    onnx_art = to_onnx(load_checkpoint(tuned.path), OnnxConfig(), tuned.path.parent / "onnx")
    assert [s.stage for s in onnx_art.lineage] == ["load", "finetune", "to_onnx"]
    with TextClassifier(tuned) as a, TextClassifier(onnx_art) as b:
        texts = ["the film was great", "the plot was awful"]
        np.testing.assert_allclose(a.logits(texts), b.logits(texts), atol=1e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bf16_autocast_training_step(tiny_bert, data, tmp_path, device):
    """The device path: a few bf16-autocast steps (on CUDA where there is one; the CPU twin always runs)."""
    cfg = FinetuneConfig(max_steps=3, lr=1e-3, batch_size=16, max_length=16, device=device, bf16=True, patience=None)
    art = finetune(load_checkpoint(tiny_bert, "text-classification"), data[0], data[1], cfg, tmp_path / "ft", show_bar=False)
    step = art.lineage[-1]
    assert step.metrics["steps"] == 3 and step.config["bf16"] is True and step.config["device"] == device
    with TextClassifier(art) as clf:  # saved from the CPU in fp32, loads and runs anywhere
        assert len(clf.predict(["the film was great"])) == 1


def test_finetune_config_errors():
    with pytest.raises(ConfigError, match="device must be cpu or cuda, got 'tpu'"):
        FinetuneConfig(device="tpu")
    with pytest.raises(ConfigError, match="lr must be in \\(0, 1\\), got 5"):
        FinetuneConfig(lr=5)
    with pytest.raises(ConfigError, match="epochs must be a positive integer, got 0"):
        FinetuneConfig(epochs=0)


def test_lora_merge_gives_the_adapter_logits(tiny_bert):
    art = load_checkpoint(tiny_bert, "text-classification")
    model = with_lora(load_torch_model(art), FinetuneConfig(lora=True, lora_dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B is no longer zero
    model.eval()
    feed = {"input_ids": torch.tensor([[2, 9, 12, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]]),
            "token_type_ids": torch.zeros(1, 5, dtype=torch.long)}
    with torch.no_grad():
        adapted = model(**feed).logits
        merged = model.merge_and_unload()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        plain = load_torch_model(art)(**feed).logits
        np.testing.assert_allclose(merged(**feed).logits.numpy(), adapted.numpy(), atol=1e-5)
    assert not np.allclose(plain.numpy(), adapted.numpy(), atol=1e-3)  # the adapter did change the model


def dead_units_model(tiny_bert, tmp_path):
    """Layer 0 head 1 and layer 1 head 3 write nothing (zero output columns); 16 FFN neurons likewise."""
    model = load_torch_model(load_checkpoint(tiny_bert, "text-classification"))
    d = 8
    with torch.no_grad():
        for layer, head in ((0, 1), (1, 3)):
            model.bert.encoder.layer[layer].attention.output.dense.weight[:, head * d:(head + 1) * d] = 0
        for layer in (0, 1):
            model.bert.encoder.layer[layer].output.dense.weight[:, :8] = 0
    out = tmp_path / "dead"
    model.save_pretrained(str(out))
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_bert / f).exists():
            (out / f).write_bytes((tiny_bert / f).read_bytes())
    return out


def test_removing_zero_importance_units_keeps_outputs(tiny_bert, tmp_path, data):
    src = load_checkpoint(dead_units_model(tiny_bert, tmp_path), "text-classification")
    cfg = PruneConfig(kind="structured", heads=2 / 8, ffn=16 / 128, samples=32)
    pruned = prune(src, cfg, tmp_path / "pruned", train=data[0], show_bar=False)
    structure = pruned.lineage[-1].metrics["structure"]
    assert structure["kept_head_indices"] == [[0, 2, 3], [0, 1, 2]]
    assert structure["heads"] == [3, 3] and structure["ffn"] == [56, 56]
    assert pruned.lineage[-1].metrics["parameters_after"] < pruned.lineage[-1].metrics["parameters_before"]
    feed = {"input_ids": np.array([[2, 9, 12, 30, 3], [2, 11, 3, 0, 0]]), "attention_mask": np.array([[1] * 5, [1, 1, 1, 0, 0]]),
            "token_type_ids": np.zeros((2, 5), np.int64)}
    with open_session(src) as a, open_session(pruned) as b:  # the pruned artifact reloads from disk
        np.testing.assert_allclose(a.run(feed)["logits"], b.run(feed)["logits"], atol=1e-5)
    # uneven heads per layer still export and validate
    onnx_art = to_onnx(load_checkpoint(pruned.path), OnnxConfig(), tmp_path / "onnx")
    assert onnx_art.lineage[-1].metrics["validation"]["outputs"]["logits"]["max_abs"] <= 1e-4


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_structured_prune_with_recovery_and_distillation(tuned, data, tmp_path, device):
    """The recovery runs on --device (CUDA where there is one); the result is saved from the CPU either way."""
    cfg = PruneConfig(kind="structured", heads=0.25, ffn=0.3, samples=32, recover_steps=4, distill=True, batch_size=16,
                      device=device)
    art = prune(load_checkpoint(tuned.path), cfg, tmp_path / "p", train=data[0], dev=data[1], show_bar=False)
    m = art.lineage[-1].metrics
    assert sum(m["structure"]["heads"]) == 6 and m["recovery"]["steps"] == 4
    assert art.lineage[-1].config["device"] == device
    assert {"eval_before", "eval_after_removal", "eval"} <= set(m)
    onnx_art = to_onnx(load_checkpoint(art.path), OnnxConfig(optimize=True), tmp_path / "onnx")
    assert onnx_art.lineage[-1].metrics["validation"]["outputs"]["logits"]["max_abs"] <= 1e-4


def test_layer_removal_shrinks_depth_and_reloads(tuned, data, tmp_path):
    cfg = PruneConfig(kind="structured", layers=1, heads=0.25, ffn=0.0, samples=32, batch_size=16)
    art = prune(load_checkpoint(tuned.path), cfg, tmp_path / "p", train=data[0], dev=data[1], show_bar=False)
    m = art.lineage[-1].metrics
    assert len(m["layers"]["removed"]) == 1 and len(m["layers"]["kept"]) == 1 and len(m["structure"]["heads"]) == 1
    model = load_torch_model(load_checkpoint(art.path))  # reloads with one layer and its own head count
    assert model.config.num_hidden_layers == 1 and len(model.bert.encoder.layer) == 1
    onnx_art = to_onnx(load_checkpoint(art.path), OnnxConfig(), tmp_path / "onnx")
    assert onnx_art.lineage[-1].metrics["validation"]["outputs"]["logits"]["max_abs"] <= 1e-4
    with pytest.raises(ConfigError, match="--layers 2 would remove every layer; the model has 2"):
        prune(load_checkpoint(tuned.path), PruneConfig(layers=2, samples=8), tmp_path / "q", train=data[0], show_bar=False)


def test_prune_on_cuda_without_a_gpu_is_refused_before_scoring(tuned, data, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    cfg = PruneConfig(heads=0.25, samples=8, recover_steps=2, device="cuda")
    with pytest.raises(ConfigError, match="torch.cuda.is_available\\(\\) is False; use --device cpu"):
        prune(load_checkpoint(tuned.path), cfg, tmp_path / "p", train=data[0], show_bar=False)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("cfg, expected", [
    (PruneConfig(kind="unstructured", sparsity=0.5), 0.5),
    (PruneConfig(kind="unstructured", sparsity=0.3, scope="layer"), 0.3),
    (PruneConfig(kind="2:4"), 0.5),
])
def test_magnitude_and_2_4(tuned, tmp_path, cfg, expected):
    art = prune(load_checkpoint(tuned.path), cfg, tmp_path / "p", show_bar=False)
    m = art.lineage[-1].metrics
    assert abs(m["sparsity"] - expected) < 0.01
    if cfg.scope == "layer" or cfg.kind == "2:4":
        assert all(abs(v - expected) < 0.01 for v in m["sparsity_per_matrix"].values())
    if cfg.kind == "2:4":
        model = load_torch_model(art)
        w = model.bert.encoder.layer[0].intermediate.dense.weight
        assert ((w.view(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
        assert all(abs(v - 0.5) < 1e-6 for v in m["sparsity_per_matrix"].values())


def test_choose_removed_keeps_one_per_layer():
    scores = [np.array([0.0, 0.0, 0.1]), np.array([5.0, 6.0, 0.0])]
    # 4 of 6 units go, lowest (per-layer normalised) first, but each layer keeps at least one
    assert choose_removed(scores, 4 / 6, min_keep=1) == [[0, 1], [1, 2]] or choose_removed(scores, 4 / 6, 1) == [[0, 1], [0, 2]]
    removed = choose_removed(scores, 5 / 6, min_keep=1)
    assert [len(r) for r in removed] == [2, 2]


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "lottery"}, "unknown prune kind 'lottery'; valid: structured, unstructured, 2:4"),
    ({"heads": 1.2}, "--heads must be in \\[0, 1\\)"),
    ({"sparsity": 0}, "--sparsity must be in \\(0, 1\\)"),
    ({"heads": 0, "ffn": 0}, "needs --layers, --heads or --ffn above 0"),
    ({"layers": -1}, "--layers must be a whole number >= 0"),
    ({"distill": True}, "--distill needs --recover-steps > 0"),
    ({"device": "tpu"}, "unknown device 'tpu'; valid: cpu, cuda"),
    ({"device": "cuda"}, "--device cuda moves the recovery fine-tuning; it needs --recover-steps > 0"),
    ({"device": "cuda", "kind": "unstructured"}, "--device cuda moves structured pruning's recovery fine-tuning; "
                                                 "unstructured pruning trains nothing"),
])
def test_prune_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PruneConfig(**kwargs)


def test_training_logs_progress_without_a_bar(tiny_bert, data, tmp_path, monkeypatch):
    """In a log (no terminal, so no bar) training says where it is at least every LOG_EVERY_S, not only at
    evaluations (a new user saw 5 silent minutes)."""
    import exporter.training

    monkeypatch.setattr(exporter.training, "LOG_EVERY_S", 0.0)
    said = []
    cfg = FinetuneConfig(max_steps=3, lr=1e-3, batch_size=16, max_length=16, patience=None)
    finetune(load_checkpoint(tiny_bert, "text-classification"), data[0], data[1], cfg, tmp_path / "ft",
             progress=said.append, show_bar=False)
    assert [m.split(":")[0] for m in said if m.startswith("step ") and "eval" not in m] == ["step 1/3", "step 2/3"]
