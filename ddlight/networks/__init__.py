"""Classifiers of audio features ``[B, C, F, T]``: plain ``nn.Module`` s and a registry.

Every network is an :class:`AudioNetwork`: it has ``in_shape``, ``num_classes`` and
``embed_dim`` attributes, an ``embed(x)`` method (features before the final linear layer, used
by the coreset baselines) and a ``forward`` that works under :func:`torch.func.functional_call`,
so distillers can unroll differentiable SGD through it. Prefer ``norm="instance"`` (or
``"none"``) inside such unrolled loops: batch norm updates its running statistics in place; a distiller
that differentiates through the network's backward pass (MTT, DC) should also pass it through
:func:`for_unrolling`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from ddlight.networks.base import AudioNetwork, InShape, as_in_shape
from ddlight.networks.cnn4 import CNN4
from ddlight.networks.convnet import ConvNet
from ddlight.networks.instance_norm import InstanceNorm
from ddlight.networks.kws import TCResNet8
from ddlight.networks.mlp import MLP
from ddlight.networks.resnet import ResNet, resnet18
from ddlight.networks.second_order import for_unrolling
from ddlight.networks.statpool import HiddenStates, StatsPoolTDNN, statistics_pooling
from ddlight.networks.vgg import VGG, vgg11

#: Network builders by name; each takes ``(in_shape, num_classes, **options)``.
NETWORKS: dict[str, Callable[..., AudioNetwork]] = {
    "convnet": ConvNet,
    "resnet18": resnet18,
    "vgg11": vgg11,
    "mlp": MLP,
    "tcresnet8": TCResNet8,
    "cnn4": CNN4,
    "statpool": StatsPoolTDNN,
}


def network_options(name: str) -> tuple[str, ...]:
    """Names of the options (keyword arguments besides the shapes) that a network takes.

    Args:
        name: A key of :data:`NETWORKS`.

    Returns:
        The option names, in signature order.

    Raises:
        ValueError: If ``name`` is not a registered network.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(NETWORKS)}")
    params = inspect.signature(NETWORKS[name]).parameters
    return tuple(p for p in params if p not in ("in_shape", "num_classes"))


def build_network(
    name: str, in_shape: Sequence[int], num_classes: int, **options: object
) -> AudioNetwork:
    """Build a registered network.

    Args:
        name: A key of :data:`NETWORKS`.
        in_shape: ``(C, F, T)`` of one example (tuple or list).
        num_classes: Number of classes.
        **options: Keyword arguments of that network (see :func:`network_options`).

    Returns:
        The network.

    Raises:
        ValueError: If ``name`` is unknown.
        TypeError: If an option is not one the network takes.
    """
    valid = network_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"network {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(valid)}"
        )
    return NETWORKS[name](as_in_shape(in_shape), num_classes, **options)


__all__ = [
    "CNN4",
    "MLP",
    "NETWORKS",
    "VGG",
    "AudioNetwork",
    "ConvNet",
    "HiddenStates",
    "InShape",
    "InstanceNorm",
    "ResNet",
    "StatsPoolTDNN",
    "TCResNet8",
    "as_in_shape",
    "build_network",
    "for_unrolling",
    "network_options",
    "resnet18",
    "statistics_pooling",
    "vgg11",
]
