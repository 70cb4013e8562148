"""A small residual CNN for the padding experiment (issue 13, Alsallakh et al. Fig. 6).

Downsampling is done only by stride-2 3x3 convs with ``padding=1`` (plus their 1x1 stride-2
shortcuts, as in ResNet), so the input size decides whether the bottom/right padding is read:

  28x28: 28 -> 14 -> 7   both stride-2 convs read an even-sized map and leave their bottom row and
                         right column of padding unread (top/left padding is always read)
  29x29: 29 -> 15 -> 8   both read an odd-sized map and consume the padding on all four sides

Layout (post-activation BasicBlocks, BatchNorm, ReLU; ~91k parameters)::

  stem    conv 3x3 1->16 s1, BN, ReLU                    28 (29)
  block1  BasicBlock 16->32, stride 2 (conv1 s2 + 1x1 s2 shortcut)   14 (15)
  block2  BasicBlock 32->32, stride 1                    14 (15)
  block3  BasicBlock 32->64, stride 2                     7 (8)
  gap, flatten, fc 64->10

Model spec: ``viscnn.zoo.resnet_pad:resnet_pad``; trained by :mod:`viscnn.zoo.train_resnet_pad`
and shipped prepped as ``fmnist_pad28`` and ``fmnist_pad29``.
"""

from __future__ import annotations

from torch import nn

N_CLASSES = 10


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the (1x1 stride-s conv + BN) shortcut, -> ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(out + skip)


class ResNetPad(nn.Module):
    """1xHxW -> 10 logits, any H, W >= 5 (global average pooling); meant for 28x28 and 29x29."""

    def __init__(self, widths=(16, 32, 64), n_classes: int = N_CLASSES):
        super().__init__()
        c0, c1, c2 = widths
        self.conv1 = nn.Conv2d(1, c0, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c0)
        self.relu1 = nn.ReLU()
        self.block1 = BasicBlock(c0, c1, stride=2)
        self.block2 = BasicBlock(c1, c1, stride=1)
        self.block3 = BasicBlock(c1, c2, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c2, n_classes)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(self.flatten(self.gap(x)))


def resnet_pad() -> nn.Module:
    """A freshly initialised :class:`ResNetPad` (load ``prepped_models/fmnist_pad28/weights.pt`` or
    ``prepped_models/fmnist_pad29/weights.pt`` into it)."""
    return ResNetPad()
