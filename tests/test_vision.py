"""The vision family end to end on tiny models built in code: a generic nn.Module CNN through
to_onnx_module -> static int8 -> ImageClassifier (and kiln serve in test_vision_serve.py); tiny Hugging Face
ViT / ResNet / ConvNeXt / MobileNetV2 through kiln export; bad inputs, one line each."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from runtime.errors import ArtifactError, ConfigError, DataError, InputError, SourceError, TaskError
from runtime.tasks import family_for
from runtime.tasks.vision import ImageClassifier, ImagePreprocessing, preprocess_images

LABELS = ["circle", "square", "cross"]
PREP = ImagePreprocessing(size=(16, 16), channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def shapes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 16x16 RGB uint8 images of three drawable classes (a disc, a filled square, a cross) with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    imgs, labels = [], []
    for i in range(n):
        k = i % 3
        cy, cx = rng.integers(6, 10, size=2)
        if k == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
        elif k == 1:
            mask = (abs(yy - cy) <= 3) & (abs(xx - cx) <= 3)
        else:
            mask = (abs(yy - cy) <= 1) | (abs(xx - cx) <= 1)
        img = rng.integers(0, 60, size=(16, 16, 3))
        img[mask] = 200 + rng.integers(0, 55, size=(int(mask.sum()), 3))
        imgs.append(img.astype(np.uint8))
        labels.append(k)
    return np.stack(imgs), np.asarray(labels)


def tiny_cnn():
    import torch

    class TinyCNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
            self.head = torch.nn.Linear(16, len(LABELS))

        def forward(self, x):
            return self.head(self.features(x).flatten(1))

    return TinyCNN()


@pytest.fixture(scope="module")
def trained_cnn():
    """The CNN trained for a few steps on the drawn shapes, so int8 accuracy means something."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = tiny_cnn()
    imgs, labels = shapes(60)
    x = torch.from_numpy(np.stack(preprocess_images(list(imgs), PREP)))
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend (seconds instead of half a second here)
    try:
        for _ in range(30):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def cnn_onnx(trained_cnn, tmp_path_factory):
    import torch

    from exporter.module_export import to_onnx_module

    out = tmp_path_factory.mktemp("cnn") / "onnx"
    return to_onnx_module(trained_cnn, torch.zeros(2, *PREP.shape), PREP, LABELS, out)


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    """The drawn shapes as PNG files in one subfolder per label (the image-folder layout)."""
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path_factory.mktemp("shapes")
    imgs, labels = shapes(60, seed=1)
    for i, (img, k) in enumerate(zip(imgs, labels)):
        (root / LABELS[k]).mkdir(exist_ok=True)
        Image.fromarray(img).save(root / LABELS[k] / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def cnn_int8(cnn_onnx, tmp_path_factory):
    from exporter.quantize import QuantConfig, quantize

    imgs, _ = shapes(64, seed=2)
    calib = cnn_onnx.family.calibration_feeds(cnn_onnx, list(imgs), n=64, batch_size=16)
    return quantize(cnn_onnx, QuantConfig(method="static-int8"), tmp_path_factory.mktemp("int8") / "q", calibration=calib)


def test_module_export_is_validated_and_described(cnn_onnx):
    assert cnn_onnx.task == "image-classification" and cnn_onnx.family.name == "vision"
    assert cnn_onnx.inputs[0].shape == ("batch", 3, 16, 16)
    step = cnn_onnx.lineage[-1]
    assert step.stage == "to_onnx_module" and step.metrics["validation"]["outputs"]["logits"]["max_abs"] < 1e-4
    assert cnn_onnx.meta["preprocessing"]["size"] == [16, 16]
    assert cnn_onnx.verify() == []


def test_static_int8_is_qdq_per_channel_and_keeps_accuracy(cnn_onnx, cnn_int8):
    import onnx

    ops = [n.op_type for n in onnx.load(str(cnn_int8.model_file)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert tuple(cnn_int8.lineage[-1].config["op_types"]) == ("Conv", "MatMul", "Gemm")  # the family's
    assert cnn_int8.lineage[-1].config["per_channel"] is True
    imgs, labels = shapes(90, seed=3)
    with ImageClassifier(cnn_onnx) as fp32, ImageClassifier(cnn_int8) as int8:
        acc32 = (fp32.logits(list(imgs)).argmax(-1) == labels).mean()
        acc8 = (int8.logits(list(imgs)).argmax(-1) == labels).mean()
    assert acc32 >= 0.9 and acc8 >= acc32 - 0.05


def test_image_classifier_accepts_arrays_tensors_and_batches(cnn_onnx, trained_cnn):
    import torch

    imgs, labels = shapes(10, seed=4)
    with ImageClassifier(cnn_onnx, batch_size=4) as clf:
        preds = clf.predict(list(imgs))
        assert [p.label for p in preds] == [LABELS[k] for k in clf.logits(list(imgs)).argmax(-1)]
        assert all(abs(sum(p.scores.values()) - 1) < 1e-6 for p in preds)
        batch = np.stack(preprocess_images(list(imgs), PREP))
        np.testing.assert_allclose(clf.logits(batch), clf.logits(list(imgs)), atol=1e-5)
        with torch.inference_mode():
            ref = trained_cnn(torch.from_numpy(batch)).numpy()
        np.testing.assert_allclose(clf.logits(batch), ref, atol=1e-4)
        gray = imgs[:, :, :, 0]  # a grayscale image to an RGB model: converted (channels repeated)
        np.testing.assert_allclose(clf.logits(list(gray)), clf.logits([np.repeat(g[:, :, None], 3, 2) for g in gray]))


def test_image_classifier_decodes_files_bytes_and_pil(cnn_onnx, shapes_folder):
    from PIL import Image

    files = sorted(shapes_folder.rglob("*.png"))[:3]
    with ImageClassifier(cnn_onnx) as clf:
        by_path = clf.logits(files)
        by_bytes = clf.logits([f.read_bytes() for f in files])
        by_pil = clf.logits([Image.open(f) for f in files])
        by_array = clf.logits([np.asarray(Image.open(f)) for f in files])
        gray = io.BytesIO()
        Image.open(files[0]).convert("L").save(gray, "PNG")
        assert clf.predict([gray.getvalue()])[0].label in LABELS  # grayscale file to an RGB model: converted
        big = io.BytesIO()
        Image.open(files[0]).resize((40, 32)).save(big, "JPEG")
        assert clf.logits([big.getvalue()]).shape == (1, 3)  # resized to the model's 16x16
    np.testing.assert_allclose(by_path, by_bytes)
    np.testing.assert_allclose(by_path, by_pil)
    np.testing.assert_allclose(by_path, by_array)


def test_bad_image_inputs_are_one_line_errors(cnn_onnx, tmp_path):
    pytest.importorskip("PIL")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        ([bad], r"broken.png\) is not a decodable image"),
        ([b"GIF89a garbage"], r"images\[0\] \(14 bytes\) is not a decodable image"),
        (["the movie was good"], r"images\[0\] is text \('the movie was good'\), not an image"),  # image model given text
        (np.zeros((2, 3, 28, 28), np.float32), r"got a float32 batch of shape \(2, 3, 28, 28\); the model takes \(batch, 3, 16, 16\)"),
        ([np.zeros((1, 16, 16), np.float32)], r"shape \(1, 16, 16\); the model takes preprocessed images of shape \(3, 16, 16\)"),
        ([tmp_path / "missing.png"], "does not exist"),
        ("one.png", "wrap a single image in a list"),
    ]
    with ImageClassifier(cnn_onnx) as clf:
        for images, match in cases:
            with pytest.raises(InputError, match=match) as e:
                clf.predict(images)
            assert "\n" not in str(e.value)


def test_text_model_given_an_image(tiny_onnx):
    from runtime.pipeline import TextClassifier

    with TextClassifier(tiny_onnx) as clf, pytest.raises(InputError, match=r"texts\[0\] is ndarray"):
        clf.predict([np.zeros((16, 16, 3), np.uint8)])
    with pytest.raises(TaskError, match="needs an artifact of task image-classification"):
        ImageClassifier(tiny_onnx)


def test_pipeline_for_and_accuracy_on_an_image_folder(cnn_onnx, shapes_folder, tmp_path):
    from calibration.images import load_image_folder
    from runtime.pipeline import pipeline_for
    from runtime.tasks.metrics import measure_accuracy

    data = load_image_folder(shapes_folder, LABELS)
    with pipeline_for(cnn_onnx) as clf:
        assert isinstance(clf, ImageClassifier)
        result = measure_accuracy(clf, data)
    assert result["n"] == 60 and result["accuracy"] >= 0.9
    other = tmp_path / "other"
    (other / "triangle").mkdir(parents=True)
    (other / "triangle" / "t.png").write_bytes((shapes_folder / "circle").iterdir().__next__().read_bytes())
    with pytest.raises(DataError, match="label folder 'triangle' is not one of the model's labels"):
        load_image_folder(other, LABELS)


def test_preprocessing_validation_and_hf_configs():
    with pytest.raises(ConfigError, match="channels must be 1 or 3, got 2"):
        ImagePreprocessing(size=(8, 8), channels=2)
    with pytest.raises(ConfigError, match="mean needs 1 or 3 values"):
        ImagePreprocessing(size=(8, 8), mean=(0.1, 0.2))
    with pytest.raises(ArtifactError, match="unknown keys"):
        ImagePreprocessing.from_dict({"size": [8, 8], "colour": "red"})
    vit = ImagePreprocessing.from_hf({"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3,
                                      "image_std": [0.5] * 3, "rescale_factor": 1 / 255}, {"num_channels": 3})
    assert vit.size == (32, 32) and vit.resize_shortest is None and vit.mean == (0.5, 0.5, 0.5)
    convnext = ImagePreprocessing.from_hf({"size": {"shortest_edge": 224}, "crop_pct": 0.875,
                                           "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
                                          {"num_channels": 3})
    assert convnext.size == (224, 224) and convnext.resize_shortest == 256
    gray = ImagePreprocessing(size=(4, 4), channels=1)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 76 (ITU-R 601-2, as Pillow's convert("L"))
    assert preprocess_images([rgb], gray)[0].shape == (1, 4, 4)
    assert round(float(preprocess_images([rgb], gray)[0][0, 0, 0]) * 255) == 76
    bgr = ImagePreprocessing(size=(4, 4), channel_order="BGR")
    assert preprocess_images([rgb], bgr)[0][2, 0, 0] == 1.0  # red lands in the last channel
    pytest.importorskip("PIL")  # resizing needs Pillow; everything above is numpy
    x = preprocess_images([np.full((300, 400, 3), 255, np.uint8)], convnext)[0]
    assert x.shape == (3, 224, 224) and np.allclose(x[0], (1 - 0.485) / 0.229, atol=1e-5)


# -- Hugging Face image classifiers through kiln export ----------------------------------------------

def build_hf_vision(path, model_type: str):
    """A tiny randomly initialised image classifier + its preprocessor_config.json."""
    import torch
    import transformers

    torch.manual_seed(0)
    labels = dict(num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    configs = {
        "vit": transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64, **labels),
        "resnet": transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                            layer_type="basic", **labels),
        "convnext": transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                                patch_size=2, **labels),
        "deit": transformers.DeiTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=64, **labels),
        "mobilenet_v2": transformers.MobileNetV2Config(num_channels=3, image_size=16, depth_multiplier=0.25, **labels),
    }
    config = configs[model_type]
    config.architectures = [f"{type(config).__name__.removesuffix('Config')}ForImageClassification"]  # DeiT has two heads
    model = transformers.AutoModelForImageClassification.from_config(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    processor = {"size": {"height": 16, "width": 16}, "do_normalize": True, "image_mean": [0.5] * 3,
                 "image_std": [0.5] * 3, "rescale_factor": 1 / 255, "resample": 2}
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return path


@pytest.mark.parametrize("model_type", ["vit", "deit", "resnet", "convnext", "mobilenet_v2"])
def test_hf_image_classifiers_export_and_validate(model_type, tmp_path):
    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx

    src = build_hf_vision(tmp_path / model_type, model_type)
    art = to_onnx(load_checkpoint(src, "image-classification"), OnnxConfig(), tmp_path / "onnx")
    assert art.inputs[0].name == "pixel_values" and art.inputs[0].shape[:2] == ("batch", 3)
    assert art.lineage[-1].metrics["validation"]["batches"] == 3
    imgs, _ = shapes(5)
    with ImageClassifier(art) as clf:
        assert len(clf.predict(list(imgs))) == 5


def test_hf_checkpoint_without_preprocessing_is_refused(tmp_path):
    from exporter.load import load_checkpoint

    src = build_hf_vision(tmp_path / "vit", "vit")
    (src / "preprocessor_config.json").unlink()
    with pytest.raises(SourceError, match="no preprocessor_config.json"):
        load_checkpoint(src, "image-classification")


def test_vision_family_feeds():
    fam = family_for("image-classification")
    from runtime.artifact import TensorSpec
    from runtime.tasks.meta import ModelMeta

    meta = ModelMeta.from_dict({"preprocessing": PREP.to_dict()})
    specs = (TensorSpec("pixel_values", "float32", ("batch", 3, "height", "width")),)
    feeds = fam.validation_feeds(specs, meta)
    assert [f["pixel_values"].shape for f in feeds] == [(1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16)]
    assert fam.example_feed(specs, meta, batch=2, seed=1)["pixel_values"].dtype == np.float32


# -- kiln serve with images ---------------------------------------------------------------------------

def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def multipart(files: list[bytes], boundary: str = "kilnboundary") -> tuple[bytes, str]:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}.png"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + f + b"\r\n" for i, f in enumerate(files)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_serve_int8_cnn_takes_base64_json_and_multipart(cnn_int8):
    import base64

    pytest.importorskip("PIL")
    pytest.importorskip("uvicorn")
    from tests.test_server import ThreadServer, request

    imgs, _ = shapes(6, seed=5)
    files = [png_bytes(i) for i in imgs]
    with ImageClassifier(cnn_int8) as clf:
        expected = [p.label for p in clf.predict(files)]
    with ThreadServer(cnn_int8.path, max_inputs=4, max_batch_size=4) as s:
        status, _, raw = request(s.port, "POST", "/v1/predict", {"images": [base64.b64encode(f).decode() for f in files[:4]]})
        assert status == 200, raw
        assert [p["label"] for p in json.loads(raw)["predictions"]] == expected[:4]
        body, ctype = multipart(files[4:])
        status, _, raw = request(s.port, "POST", "/v1/predict", body, {"Content-Type": ctype})
        assert status == 200, raw
        assert [p["label"] for p in json.loads(raw)["predictions"]] == expected[4:]
        bad = [
            ({"images": ["%%%"]}, 422, r"images\[0\] is not valid base64"),
            ({"images": [base64.b64encode(b"garbage").decode()]}, 422, r"images\[0\] \(7 bytes\) is not a decodable image"),
            ({"inputs": ["the movie was good"]}, 422, "this is an image classifier"),  # an image model given text
            ({"images": []}, 422, "no images in the request"),
            ({"images": ["aGk="] * 5}, 413, "5 images in one request; the limit is 4"),
        ]
        for payload, code, match in bad:
            status, _, raw = request(s.port, "POST", "/v1/predict", payload)
            assert status == code and __import__("re").search(match, json.loads(raw)["error"]), raw


def test_serve_text_model_given_an_image(tiny_onnx):
    pytest.importorskip("uvicorn")
    from tests.test_server import ThreadServer, request

    with ThreadServer(tiny_onnx.path) as s:
        status, _, raw = request(s.port, "POST", "/v1/predict", {"images": ["aGk="]})
        assert status == 422 and "this model classifies text" in json.loads(raw)["error"]
        body, ctype = multipart([b"\x89PNG"])
        status, _, raw = request(s.port, "POST", "/v1/predict", body, {"Content-Type": ctype})
        assert status == 422 and "not images" in json.loads(raw)["error"]


def test_vit_dynamic_int8_and_fp16(tmp_path):
    import onnx

    from exporter.load import load_checkpoint
    from exporter.onnx_export import OnnxConfig, to_onnx
    from exporter.quantize import QuantConfig, quantize

    art = to_onnx(load_checkpoint(build_hf_vision(tmp_path / "vit", "vit"), "image-classification"), OnnxConfig(),
                  tmp_path / "onnx")
    dyn = quantize(art, QuantConfig(method="dynamic-int8"), tmp_path / "dyn")
    ops = {n.op_type for n in onnx.load(str(dyn.model_file)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}  # the linear layers
    assert tuple(dyn.lineage[-1].config["op_types"]) == ("MatMul", "Gemm")
    half = quantize(art, QuantConfig(method="fp16"), tmp_path / "fp16")
    imgs, _ = shapes(4)
    with ImageClassifier(art) as a, ImageClassifier(dyn) as b, ImageClassifier(half) as c:
        ref = a.logits(list(imgs))
        assert np.abs(b.logits(list(imgs)) - ref).max() < 0.1 and np.abs(c.logits(list(imgs)) - ref).max() < 0.05


def test_prune_refuses_cnns_in_one_line(tmp_path):
    from exporter.load import load_checkpoint
    from exporter.prune import PruneConfig, prune

    src = load_checkpoint(build_hf_vision(tmp_path / "resnet", "resnet"), "image-classification")
    with pytest.raises(TaskError, match="'resnet' is not a ViT, and CNN channel pruning is not implemented"):
        prune(src, PruneConfig(heads=0.25), tmp_path / "p")


def test_grayscale_to_an_rgb_model_repeats_the_channel_and_rgb_to_gray_uses_luma():
    """The documented conversions (README, Preprocessing), exactly: a grayscale file given to an RGB model
    is the same tensor as the RGB image with the gray value in every channel; an RGB file given to a
    1-channel model is Pillow's convert('L')."""
    Image = pytest.importorskip("PIL.Image")
    imgs, _ = shapes(1)
    gray = np.asarray(Image.fromarray(imgs[0]).convert("L"))
    as_rgb = preprocess_images([png_bytes(gray)], PREP)[0]
    np.testing.assert_allclose(as_rgb, preprocess_images([np.repeat(gray[..., None], 3, -1)], PREP)[0])
    one = ImagePreprocessing(size=(16, 16), channels=1, mean=(0.5,), std=(0.25,))
    np.testing.assert_allclose(preprocess_images([png_bytes(imgs[0])], one)[0],
                               preprocess_images([gray[..., None]], one)[0])
