"""Backbone construction: the initialisation every CNN starts from."""

import pytest
import torch
from timm.models._efficientnet_blocks import InvertedResidual
from timm.models.resnet import BasicBlock, Bottleneck

from sslight.models import build_backbone

RESIDUAL_BLOCKS = (InvertedResidual, BasicBlock, Bottleneck)


@pytest.mark.parametrize("model", ["mnv2", "r18", "r50"])
def test_every_residual_block_starts_as_the_identity(model):
    """MobileNetV2's inverted bottlenecks as timm's ResNet blocks: the residual branch starts at zero."""
    net = build_backbone(model, small_stem=False, image_size=32).eval()
    blocks = [b for b in net.modules() if isinstance(b, RESIDUAL_BLOCKS)
              and getattr(b, "has_skip", True) and getattr(b, "downsample", None) is None]
    assert blocks
    x_of = {}
    handles = [b.register_forward_hook(lambda mod, args, out: x_of.__setitem__(mod, (args[0], out))) for b in blocks]
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    for h in handles:
        h.remove()
    for block in blocks:
        x, out = x_of[block]
        torch.testing.assert_close(out, x.relu() if isinstance(block, (BasicBlock, Bottleneck)) else x)
