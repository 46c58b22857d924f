"""Classifiers. Inputs are in [0, 1]; any normalization lives inside the model, so attacks and
the eps-ball always work in pixel space.

Each model is initialized as in the reference code its recipe comes from, because the init moves
the numbers: PyTorch's default init leaves the TRADES SmallCNN (7 layers, no batch norm) at
chance for its first epochs of adversarial training at eps 0.3, where the reference's init
learns within one. The reference of each model is cited at its ``reset_parameters``; the
weights depend only on ``torch.manual_seed``, so a seed reproduces them.
"""

from __future__ import annotations

import re

import torch
from torch import nn
import torch.nn.functional as F

from advtui.core.config import check_model_name
from advtui.core.datasets import DATASET_SPECS


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """The 4-conv MNIST network of the TRADES code: conv 32, 32, pool, conv 64, 64, pool,
    fc 200, 200, 10 (dropout 0.5 before the second fc, as there)."""

    def __init__(self, in_channels: int = 1, size: int = 28, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = ((size - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 200), nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, num_classes),
        )

        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TRADES, models/small_cnn.py: Kaiming-normal conv weights (fan-in, gain sqrt 2), zero
        conv biases, and a zero last layer (weight and bias); fc1 and fc2 keep PyTorch's
        default init there too."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        last = self.classifier[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """VGG-16 with batch norm, CIFAR-sized (one linear classifier on the 512-d feature), as in
    the AdvTrain code the paper's CIFAR-10 baseline comes from (xuanqing94/BayesianDefense,
    models/vgg.py, after kuangliu/pytorch-cifar). Its convolutions have biases; here they do not,
    since each is followed by batch norm, which removes any per-channel constant (the outputs are
    the same, with 4,224 fewer parameters)."""

    def __init__(self, in_channels: int = 3, size: int = 32, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BayesianDefense's VGG sets no init of its own: PyTorch's defaults (Kaiming-uniform
        with a = sqrt 5 for conv and linear weights), with batch norm at weight 1, bias 0 (the
        default since PyTorch 1.2; PyTorch 1.1, the paper's, drew BN weights from U(0, 1))."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WideResNet-depth-width (Zagoruyko & Komodakis), as used by Madry et al. and TRADES
    (TRADES, models/wideresnet.py: the same blocks, without its unused ``sub_block1``)."""

    def __init__(self, depth: int = 34, width: int = 10, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n + 4 (for example 16, 28, 34)")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for stage in range(3):
            for i in range(n):
                cin = widths[stage] if i == 0 else widths[stage + 1]
                blocks.append(_WideBlock(cin, widths[stage + 1], (1 if stage == 0 else 2) if i == 0 else 1))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TRADES, models/wideresnet.py: conv weights from N(0, 2 / (k * k * out_channels)) (a
        fan-out Kaiming normal), batch norm at weight 1 and bias 0, a zero bias on the linear
        layer, whose weight keeps PyTorch's default init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(o, 1).flatten(1))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 in its CIFAR form (3x3 stem, no max-pool), as in kuangliu/pytorch-cifar
    models/resnet.py, the ResNet that TRADES' and the robust-overfitting code's CIFAR-10
    experiments use."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference sets no init of its own: PyTorch's defaults (Kaiming-uniform with
        a = sqrt 5 for conv and linear weights; batch norm at weight 1, bias 0)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def build_model(name: str, dataset: str) -> nn.Module:
    """A fresh classifier for ``dataset``'s input shape and classes (its row in
    ``core.datasets.DATASET_SPECS``), the row's normalization included."""
    check_model_name(name)
    spec = DATASET_SPECS[dataset]
    channels, size, _ = spec.shape
    classes = spec.num_classes
    if name == "smallcnn":
        net: nn.Module = SmallCNN(channels, size, classes)
    elif name == "vgg16":
        net = VGG16(channels, size, classes)
    elif name == "resnet18":
        net = ResNet18(channels, classes)
    else:
        depth, width = (int(v) for v in re.match(r"^wrn-(\d+)-(\d+)$", name).groups())
        net = WideResNet(depth, width, channels, classes)
    if spec.normalization is not None:
        return nn.Sequential(Normalize(*spec.normalization), net)
    return net


def count_parameters(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
