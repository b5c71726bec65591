"""Encoders (ResNet-18 ... ResNet-200), projection heads and the SupCon / cross-entropy model wrappers.

The ResNets are assembled from torchvision's own ``BasicBlock`` / ``Bottleneck`` so the numerics and the
init match torchvision; we only add what torchvision lacks: a small-image stem (3x3 conv, stride 1,
no max-pool, for 32 px data), a width multiplier (``width=64`` is the standard network; smaller widths
make CPU demos fast), ResNet-200 (Bottleneck [3, 24, 36, 3]) and no classification layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

ARCHS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
    "resnet200": (Bottleneck, [3, 24, 36, 3]),
}
STEMS = ("imagenet", "small")
HEADS = ("mlp", "linear")


class ResNetEncoder(nn.Module):
    """ResNet trunk: images [B, 3, H, W] -> pooled features [B, out_dim] (no fc layer).

    out_dim = 8 * width * block.expansion (512 for ResNet-18/34, 2048 for ResNet-50 and deeper at width 64).
    """

    def __init__(self, arch: str = "resnet50", stem: str = "imagenet", width: int = 64,
                 zero_init_residual: bool = False):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch: unknown {arch!r}; choose one of {sorted(ARCHS)}")
        if stem not in STEMS:
            raise ValueError(f"stem: unknown {stem!r}; choose one of {STEMS}")
        if width < 1:
            raise ValueError(f"width: must be >= 1, got {width}")
        block, layers = ARCHS[arch]
        self.inplanes = width
        if stem == "imagenet":
            # 7x7/2 conv + 3x3/2 max-pool: 224 px -> 56 px before the first stage
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            # 32 px images would be 8 px after the ImageNet stem: keep resolution instead
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], 2)
        self.out_dim = 8 * width * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # each residual branch starts as identity (Goyal et al.). Off by default: with SupCon it
            # let a small ResNet-18 collapse to one point within a few steps in our digits trials
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def projection_head(kind: str, in_dim: int, feat_dim: int = 128) -> nn.Module:
    """``mlp``: in_dim -> in_dim -> feat_dim (ReLU between); ``linear``: in_dim -> feat_dim."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, feat_dim))
    if kind == "linear":
        return nn.Linear(in_dim, feat_dim)
    raise ValueError(f"head: unknown {kind!r}; choose one of {HEADS}")


class SupConModel(nn.Module):
    """Encoder + projection head. forward: images [B, 3, H, W] -> projections [B, feat_dim], not normalized.

    The projection comes out in whatever dtype autocast gives it; the trainer L2-normalizes it in fp32
    and casts it to the loss dtype in one place (``supcon_fast.engine.precision.loss_features``).
    """

    def __init__(self, encoder: nn.Module, head: str = "mlp", feat_dim: int = 128):
        super().__init__()
        self.encoder = encoder
        self.head = projection_head(head, encoder.out_dim, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class CEModel(nn.Module):
    """Encoder + linear classifier, the cross-entropy baseline. forward: [B, 3, H, W] -> logits [B, classes]."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


def build_model(arch: str = "resnet50", *, stem: str = "imagenet", width: int = 64, head: str = "mlp",
                feat_dim: int = 128, loss: str = "supcon", num_classes: int | None = None,
                channels_last: bool = False, sync_bn: bool = False) -> nn.Module:
    """The pretraining model: SupConModel for ``loss`` supcon/simclr, CEModel for ``ce``."""
    encoder = ResNetEncoder(arch, stem, width)
    if loss == "ce":
        if not num_classes:
            raise ValueError("num_classes: required for loss='ce'")
        model: nn.Module = CEModel(encoder, num_classes)
    else:
        model = SupConModel(encoder, head, feat_dim)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
