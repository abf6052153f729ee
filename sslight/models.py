"""Backbones from timm by name, and the small-input stem for 32 px images."""

from __future__ import annotations

from dataclasses import dataclass

import timm
from timm.models._efficientnet_blocks import InvertedResidual
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    kwargs: tuple = ()
    depthwise: bool = False  # built on depthwise convolutions (slow in bf16 on CPUs: sslight/precision.py)


BACKBONES = {
    "mnv2": BackboneSpec("mobilenetv2_100", depthwise=True),
    "r18": BackboneSpec("resnet18"),
    "r34": BackboneSpec("resnet34"),
    "r50": BackboneSpec("resnet50"),
    "vit_t16": BackboneSpec("vit_tiny_patch16_224"),
    "vit_t32": BackboneSpec("vit_tiny_patch16_224", (("patch_size", 32),)),
    "vit_s16": BackboneSpec("vit_small_patch16_224"),
}

SMALL_STEM_PATCH_DIVISOR = 4  # small-input ViTs use patches 4x smaller (16 -> 4, 32 -> 8)


def timm_kwargs(name: str, small_stem: bool, image_size: int) -> dict:
    """The ``timm.create_model`` keyword arguments that rebuild backbone ``name``."""
    kwargs = dict(BACKBONES[name].kwargs)
    if name.startswith("vit"):
        # dynamic size + padding: one ViT takes global and local crops of any size,
        # its positional embedding interpolated to the token grid.
        kwargs.update(dynamic_img_size=True, dynamic_img_pad=True, img_size=image_size)
        if small_stem:
            kwargs["patch_size"] = kwargs.get("patch_size", 16) // SMALL_STEM_PATCH_DIVISOR
    return kwargs


def build_backbone(name: str, small_stem: bool, image_size: int, drop_path_rate: float = 0.0) -> nn.Module:
    """A timm backbone returning pooled features; ``num_features`` gives their width.
    ``drop_path_rate``: timm's stochastic depth, for training (an inference-time no-op)."""
    model = timm.create_model(BACKBONES[name].timm_name, pretrained=False, num_classes=0,
                              drop_path_rate=drop_path_rate, **timm_kwargs(name, small_stem, image_size))
    zero_init_residual_branches(model)
    if small_stem and not name.startswith("vit"):
        # CIFAR-style stem: no early down-sampling, so 32 px images keep spatial detail.
        if name == "mnv2":
            # as the CIFAR MobileNetV2 (Sandler et al.'s network as adapted by kuangliu and
            # solo-learn): stem and the first 24-channel block at stride 1, so 32 px inputs
            # end on a 4x4 map, not 1x1.
            model.conv_stem.stride = (1, 1)
            model.blocks[1][0].conv_dw.stride = (1, 1)
        else:
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
    return model


def zero_init_residual_branches(model: nn.Module) -> None:
    """Every residual inverted-bottleneck block (MobileNetV2's) starts as the identity, its last
    BatchNorm's scale at zero: what timm's ResNets do by default (``zero_init_last``) and its
    MobileNetV2 does not. With it MobileNetV2's DINO runs end 1.7-6.3 kNN points higher in four
    paired short runs, and collapse later or not at all (BENCHMARKS.md, learning check)."""
    for block in model.modules():
        if isinstance(block, InvertedResidual) and block.has_skip:
            nn.init.zeros_(block.bn3.weight)
