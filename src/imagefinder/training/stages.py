"""Which part of the encoder learns: the trunk cut in two at block `train_from`, the early stages
frozen with their ImageNet weights, the later blocks and the head trained (see `trainer`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imagefinder.encoders.efficientnet_lite import PooledEmbedder


class TrainedStages(nn.Module):
    """The trunk cut in two at block `train_from`: `frozen` (stem and early blocks) and this
    module's forward (later blocks, head, GeM, L2), which shares its parameters with `model`,
    so training it trains the model."""

    def __init__(self, model: PooledEmbedder, train_from: int) -> None:
        super().__init__()
        trunk = model.trunk
        self._trunk = [trunk]  # a list: not registered twice as a submodule
        self.blocks = nn.ModuleList(trunk._blocks[train_from:])  # type: ignore[index]
        self.head = trunk._conv_head  # type: ignore[union-attr]
        self.head_bn = trunk._bn1  # type: ignore[union-attr]
        self.train_from = train_from
        self.p = model.p

    @property
    def trunk(self) -> nn.Module:
        return self._trunk[0]

    def frozen(self, pixels: torch.Tensor) -> torch.Tensor:
        return frozen_stages(self.trunk, self.train_from, pixels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            features = block(features)
        features = F.relu6(self.head_bn(self.head(features))).clamp(min=1e-6)
        pooled = features.pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        return F.normalize(pooled, dim=1)


def frozen_stages(trunk: nn.Module, train_from: int, pixels: torch.Tensor) -> torch.Tensor:
    """The stem and the blocks before `train_from`: pixels -> feature maps."""
    x = F.relu6(trunk._bn0(trunk._conv_stem(pixels)))  # type: ignore[operator]
    for block in trunk._blocks[:train_from]:  # type: ignore[index]
        x = block(x)
    return x


def unfreeze_last_stages(model: PooledEmbedder, train_from: int) -> list[torch.nn.Parameter]:
    """Freeze everything, then let the blocks from `train_from` and the head learn. Batch norm
    stays in eval mode (its statistics fixed) throughout: see `trainer`'s docstring."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trunk = model.trunk
    modules = [*trunk._blocks[train_from:], trunk._conv_head, trunk._bn1]  # type: ignore[index]
    trainable: list[torch.nn.Parameter] = []
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
            trainable.append(parameter)
    return trainable


def embedding_dim(model: PooledEmbedder) -> int:
    return int(model.trunk._bn1.num_features)  # type: ignore[union-attr]
