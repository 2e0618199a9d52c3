"""Packaged starting points for `kiln finetune NAME`: Hugging Face image-classifier configs sized for 28x28
grayscale digits (mnist-5k), with the preprocessing they are trained with. Data, not code: a new one is an
entry here. Any Hugging Face config.json (`kiln finetune path/config.json`) or checkpoint works the same way."""

from __future__ import annotations

from typing import Any

MNIST_PREPROCESSING = {"size": [28, 28], "channels": 1, "scale": 1 / 255, "mean": [0.1307], "std": [0.3081]}

VISION_CONFIGS: dict[str, dict[str, Any]] = {
    # 4x4 patches of 7x7 pixels, 4 layers of width 64: ~0.14M parameters (patch 4 trained slower: 0.90 dev after 15 epochs)
    "vit-tiny-mnist": {
        "config": {"model_type": "vit", "image_size": 28, "patch_size": 7, "num_channels": 1, "hidden_size": 64,
                   "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "preprocessing": MNIST_PREPROCESSING,
    },
    # a basic-block ResNet with stages of 16/32/64 channels: ~0.1M parameters
    "resnet-tiny-mnist": {
        "config": {"model_type": "resnet", "num_channels": 1, "embedding_size": 16, "hidden_sizes": [16, 32, 64],
                   "depths": [1, 1, 1], "layer_type": "basic", "downsample_in_first_stage": False},
        "preprocessing": MNIST_PREPROCESSING,
    },
}
