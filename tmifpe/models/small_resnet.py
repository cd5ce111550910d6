"""A small ResNet with batch norm for the fast preset's validation set (another architecture
than :class:`tmifpe.models.small_cnn.SmallCNN`; benchmarks/fast_validation.py)."""

from __future__ import annotations

from torch import Tensor, nn


class _Block(nn.Module):
    """[He et al. 2016] conv-BN-ReLU-conv-BN + identity (1x1 conv-BN when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(c_out))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.skip(x))


class SmallResNet(nn.Module):
    """Stem conv-BN-ReLU, two residual blocks (width, 2·width, stride 2), global average pool,
    linear. ``(N, C, H, W) -> (N, n_classes)``; inputs in [0,1]."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(), _Block(width, width, 1), _Block(width, 2 * width, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
