"""Small CNNs the pipeline trains itself (digits 8x8, MNIST 28x28)."""

from __future__ import annotations

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Two 3x3 conv layers + two linear layers; inputs in [0,1], no normalisation needed.

    ``(N, C, H, W) -> (N, n_classes)``. Sized for CPU: on 8x8 digits it trains in seconds.
    """

    def __init__(
        self, in_channels: int = 1, image_size: int = 8, n_classes: int = 10, width: int = 32
    ) -> None:
        super().__init__()
        pooled = image_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * pooled * pooled, 128),
            nn.ReLU(),
            nn.Linear(128, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
