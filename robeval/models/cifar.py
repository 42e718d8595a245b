"""CIFAR-sized architectures: cnn-small, PreAct ResNet-18, ResNet-18 and Wide ResNets.

Parameter names follow the layouts used across the robustness literature (ResNet-18 as in
AutoAttack's examples, WRN as in RobustBench) so that their state_dicts load into `net`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from robeval.models import MODELS

Act = Callable[[], nn.Module]


@MODELS.register("cnn-small", aliases=("small-cnn",))
def cnn_small(act: Act, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A 4-conv CNN with BatchNorm that trains on CPU in seconds (for tests and CI)."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), act()]

    return nn.Sequential(
        *block(in_channels, 32), nn.MaxPool2d(2),
        *block(32, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.MaxPool2d(2),
        *block(128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
    )


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int, act: Act):
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(cin), act()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout), act()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + shortcut


class BasicBlock(nn.Module):
    """Post-activation basic block of ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int, act: Act):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(cout), act()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout), act()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with four stages of two blocks (ResNet-18), pre- or post-activation."""

    def __init__(self, block: type, act: Act, num_classes: int, in_channels: int,
                 preact: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.preact = preact
        if not preact:
            self.bn1, self.act1 = nn.BatchNorm2d(64), act()
        widths, cin = (64, 128, 256, 512), 64
        for stage, width in enumerate(widths, start=1):
            stride = 1 if stage == 1 else 2
            blocks = [block(cin, width, stride, act), block(width, width, 1, act)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            cin = width
        if preact:
            self.bn, self.act = nn.BatchNorm2d(512), act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        if not self.preact:
            out = self.act1(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.preact:
            out = self.act(self.bn(out))
        return self.linear(self.pool(out).flatten(1))


@MODELS.register("preact-resnet18", aliases=("preactresnet18",))
def preact_resnet18(act: Act, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """PreAct ResNet-18, the standard architecture of fast adversarial training papers."""
    return ResNet(PreActBlock, act, num_classes, in_channels, preact=True)


@MODELS.register("resnet18", aliases=("resnet-18",))
def resnet18(act: Act, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18 (3×3 stem, no max-pool), the layout of AutoAttack's examples."""
    return ResNet(BasicBlock, act, num_classes, in_channels, preact=False)


class WideBlock(nn.Module):
    """Pre-activation wide basic block, named as in RobustBench's WideResNet."""

    def __init__(self, cin: int, cout: int, stride: int, act: Act):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), act()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), act()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal_in_out = cin == cout
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(out)
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return out + shortcut


class WideStage(nn.Module):
    """`n` wide blocks; the container is called `layer` as in RobustBench."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, act: Act):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
            for i in range(n)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-width (Zagoruyko & Komodakis), e.g. WRN-34-10 of Madry-style training."""

    def __init__(self, depth: int, width: int, act: Act, num_classes: int, in_channels: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 (e.g. 28, 34), got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        self.block1 = WideStage(n, channels[0], channels[1], 1, act)
        self.block2 = WideStage(n, channels[1], channels[2], 2, act)
        self.block3 = WideStage(n, channels[2], channels[3], 2, act)
        self.bn1, self.relu = nn.BatchNorm2d(channels[3]), act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(self.pool(out).flatten(1))


def wide_resnet(depth: int, width: int, act: Act, num_classes: int = 10,
                in_channels: int = 3) -> nn.Module:
    """WRN-`depth`-`width`; reached by the model name `wrn-D-W`."""
    return WideResNet(depth, width, act, num_classes, in_channels)


MODELS.add("wrn-34-10", lambda act, num_classes=10, in_channels=3:
           wide_resnet(34, 10, act, num_classes, in_channels), aliases=("wideresnet",))
