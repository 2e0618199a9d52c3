"""Packaged starting points for `kiln finetune NAME`: Hugging Face image-classifier configs sized for 28x28
grayscale digits (mnist-5k), with the preprocessing they are trained with. Data, not code: a new one is an
entry here. Any Hugging Face config.json (`kiln finetune path/config.json`) or checkpoint works the same way."""

from __future__ import annotations

from typing import Any

MNIST_PREPROCESSING = {"size": [28, 28], "channels": 1, "scale": 1 / 255, "mean": [0.1307], "std": [0.3081]}

VISION_CONFIGS: dict[str, dict[str, Any]] = {
    # 4x4 patches of 7x7 pixels, 4 layers of width 256: ~3.2M parameters (ViT-Tiny has 5.7M). At width 128
    # (17 tokens x 128) a batch of one was all dispatch: under onnxruntime's 2-thread CPU pool no int8
    # recipe, static or dynamic, beat fp32 (0.91x / 0.98x on a quiet 2-core Xeon); at width 256 static int8
    # is 1.24x at batch 1 and 1.87x at 32 there (benchmarks/results/vision.md). At width 64 it was worse still.
    # 4x4-pixel patches (49 tokens) at width 128 only reached 1.02x at batch 1
    "vit-tiny-mnist": {
        "config": {"model_type": "vit", "image_size": 28, "patch_size": 7, "num_channels": 1, "hidden_size": 256,
                   "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "preprocessing": MNIST_PREPROCESSING,
    },
    # a basic-block ResNet with two blocks per stage of 32/64/128 channels: ~0.7M parameters (int8 is faster
    # than fp32 from this size on; at 16/32/64 channels with one block it was not)
    "resnet-tiny-mnist": {
        "config": {"model_type": "resnet", "num_channels": 1, "embedding_size": 32, "hidden_sizes": [32, 64, 128],
                   "depths": [2, 2, 2], "layer_type": "basic", "downsample_in_first_stage": False},
        "preprocessing": MNIST_PREPROCESSING,
    },
}
