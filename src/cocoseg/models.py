"""DeepLabV3 models from torchvision, by backbone name."""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50

from cocoseg.config import schema_default

# What torch and torchvision have just imported (about 2,000 modules) lives as long as the process. Frozen, the
# collector leaves it out of every later full collection and of the collections at exit, which took about 1.5 s
# of each job's life (benchmarks/bench_startup.py).
gc.freeze()

# backbone name -> (constructor, ImageNet backbone weights)
BACKBONES: dict[str, tuple[Callable[..., nn.Module], object]] = {
    "mobilenet_v3_large": (deeplabv3_mobilenet_v3_large, MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "resnet50": (deeplabv3_resnet50, ResNet50_Weights.IMAGENET1K_V1),
}


def build_model(backbone: str, num_classes: int, weights_backbone: str,
                aux_loss: bool = schema_default("model.aux_loss"), bn_momentum: float | None = None) -> nn.Module:
    """DeepLabV3 with ``num_classes`` outputs (background included).

    ``weights_backbone="imagenet"`` loads torchvision's ImageNet weights for the backbone from
    ``$TORCH_HOME/hub/checkpoints`` (downloading them there when missing and online); ``"none"`` (what a model
    that will load a checkpoint wants) starts at random. No default: the config's, imagenet, may download.
    ``bn_momentum`` overrides the batch-norm momentum: torchvision's MobileNetV3 uses 0.01, made
    for long ImageNet runs, whose running statistics lag far behind a short run from scratch.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; available: {', '.join(BACKBONES)}")
    constructor, imagenet = BACKBONES[backbone]
    weights = imagenet if weights_backbone == "imagenet" else None
    model = constructor(weights=None, weights_backbone=weights, num_classes=num_classes, aux_loss=aux_loss)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    return model


def forward_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Main and (if the model has one) auxiliary logits at the input resolution."""
    out = model(images)
    return out["out"], out.get("aux")
