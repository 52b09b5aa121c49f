"""Building blocks shared by the networks: normalisation, activation, pooling, conv stacks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

NORMS = ("instance", "batch", "layer", "none")
ACTIVATIONS = ("relu", "leakyrelu", "gelu", "sigmoid")
POOLINGS = ("avg", "max", "none")


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the valid choices if ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(choices)}")


def norm_layer(norm: str, channels: int, dims: int = 2) -> nn.Module:
    """Normalisation layer for feature maps ``[B, channels, *spatial]``.

    ``"instance"`` is ``GroupNorm(channels, channels)`` with affine parameters, as in the DC/MTT
    code; ``"layer"`` is ``GroupNorm(1, channels)`` (normalises over channels and positions with a
    per-channel affine, so it does not depend on the input size). Both keep no running
    statistics, which makes them the right choice inside unrolled (functional) training loops.
    ``"batch"`` keeps running statistics that are updated in place in train mode.

    Args:
        norm: One of ``"instance"``, ``"batch"``, ``"layer"``, ``"none"``.
        channels: Number of channels.
        dims: Number of spatial dimensions (1 or 2), used for batch norm.

    Returns:
        The normalisation module (``nn.Identity`` for ``"none"``).

    Raises:
        ValueError: If ``norm`` is unknown.
    """
    _check_choice("norm", norm, NORMS)
    if norm == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    return nn.Identity()


def activation_layer(activation: str) -> nn.Module:
    """Activation module (never in place).

    Args:
        activation: One of ``"relu"``, ``"leakyrelu"`` (slope 0.01), ``"gelu"``, ``"sigmoid"``.

    Returns:
        The activation module.

    Raises:
        ValueError: If ``activation`` is unknown.
    """
    _check_choice("activation", activation, ACTIVATIONS)
    if activation == "leakyrelu":
        return nn.LeakyReLU(0.01)
    if activation == "gelu":
        return nn.GELU()
    if activation == "sigmoid":
        return nn.Sigmoid()
    return nn.ReLU()


def pool_layer(pooling: str, size: tuple[int, int], min_size: int = 1) -> tuple[nn.Module, tuple[int, int]]:
    """2x2 pooling that leaves alone any spatial dimension it would take below ``min_size``.

    Audio features are rectangular (e.g. 20 coefficients x 101 frames), so one axis may run out
    long before the other; that axis then stops being pooled.

    Args:
        pooling: One of ``"avg"``, ``"max"``, ``"none"``.
        size: ``(F, T)`` of the incoming feature map.
        min_size: Smallest size an axis is pooled down to.

    Returns:
        The pooling module (``nn.Identity`` when nothing is pooled) and the outgoing ``(F, T)``.

    Raises:
        ValueError: If ``pooling`` is unknown.
    """
    _check_choice("pooling", pooling, POOLINGS)
    kernel = tuple(2 if s // 2 >= min_size else 1 for s in size)
    if pooling == "none" or kernel == (1, 1):
        return nn.Identity(), size
    pool = nn.AvgPool2d(kernel) if pooling == "avg" else nn.MaxPool2d(kernel)
    return pool, (size[0] // kernel[0], size[1] // kernel[1])


def conv_pool_stack(
    in_channels: int,
    stages: Sequence[Sequence[int]],
    size: tuple[int, int],
    norm: str,
    activation: str = "relu",
    pooling: str = "avg",
    min_size: int = 1,
) -> tuple[nn.Sequential, tuple[int, int]]:
    """Stages of ``[conv3x3 (padding 1) -> norm -> activation]`` layers, each stage then pooled.

    ``stages=[[128]] * 3`` is the DC/MTT ConvNet-3; ``[[64], [128], [256, 256], ...]`` is VGG.

    Args:
        in_channels: Channels of the input.
        stages: Output widths of the conv layers of each stage.
        size: ``(F, T)`` of the input.
        norm: Normalisation (see :func:`norm_layer`).
        activation: Activation (see :func:`activation_layer`).
        pooling: Pooling after each stage (see :func:`pool_layer`).
        min_size: Smallest size an axis is pooled down to (see :func:`pool_layer`).

    Returns:
        The stack and the ``(F, T)`` of its output.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for widths in stages:
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                norm_layer(norm, width),
                activation_layer(activation),
            ]
            channels = width
        pool, size = pool_layer(pooling, size, min_size)
        layers.append(pool)
    return nn.Sequential(*layers), size


class BasicBlock(nn.Module):
    """Residual block: conv -> norm -> ReLU -> conv -> norm, plus shortcut, then ReLU.

    The 2-D 3x3 form is ResNet's basic block (He et al., CVPR 2016); the 1-D form with kernel 9
    and an activated shortcut is TC-ResNet's block (Choi et al., Interspeech 2019). The shortcut
    is a 1x1 conv + norm whenever the stride or the width changes, the identity otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm: str = "batch",
        dims: int = 2,
        kernel_size: int = 3,
        shortcut_relu: bool = False,
    ) -> None:
        """Build the block.

        Args:
            in_channels: Channels of the input.
            out_channels: Channels of the output.
            stride: Stride of the first conv (and of the shortcut).
            norm: Normalisation (see :func:`norm_layer`).
            dims: 2 for ``[B, C, F, T]`` maps, 1 for ``[B, C, T]`` sequences.
            kernel_size: Odd kernel size of both convs.
            shortcut_relu: Apply a ReLU after the projection shortcut's norm (TC-ResNet).
        """
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        pad = kernel_size // 2
        self.conv1 = conv(in_channels, out_channels, kernel_size, stride, pad, bias=False)
        self.norm1 = norm_layer(norm, out_channels, dims)
        self.conv2 = conv(out_channels, out_channels, kernel_size, 1, pad, bias=False)
        self.norm2 = norm_layer(norm, out_channels, dims)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, 1, stride, bias=False),
                norm_layer(norm, out_channels, dims),
                nn.ReLU() if shortcut_relu else nn.Identity(),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``[B, C, *spatial]``."""
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))
