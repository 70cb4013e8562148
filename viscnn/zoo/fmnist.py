"""The default model: a small Fashion-MNIST CNN whose whole kernel graph fits on one screen.

Four 3x3 convs (32/32/64/64 channels) with BatchNorm, ReLU and two max-pools, then a global
average pool and a single Linear. With no hidden Linear, every class logit is a weighted sum of
the last conv's channels, so ``build_graph(..., include_classes=True)`` can show a class layer.
Model spec: ``viscnn.zoo.fmnist:fmnist_cnn``.
"""

from __future__ import annotations

from torch import nn

N_CLASSES = 10
INPUT_SIZE = (28, 28)


class FashionCNN(nn.Module):
    """1x28x28 -> 10 logits. Layer names (conv1..conv4, fc) become the graph's layer names."""

    def __init__(self, widths=(32, 32, 64, 64), n_classes: int = N_CLASSES):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)  # 28 -> 14
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU()
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU()
        self.pool3 = nn.MaxPool2d(2)  # 14 -> 7
        self.conv4, self.bn4, self.relu4 = nn.Conv2d(c3, c4, 3, padding=1, bias=False), nn.BatchNorm2d(c4), nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c4, n_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool3(self.relu3(self.bn3(self.conv3(x))))
        x = self.relu4(self.bn4(self.conv4(x)))
        return self.fc(self.flatten(self.gap(x)))


def fmnist_cnn() -> nn.Module:
    """A freshly initialised :class:`FashionCNN` (load ``prepped_models/fmnist/weights.pt`` into it)."""
    return FashionCNN()
