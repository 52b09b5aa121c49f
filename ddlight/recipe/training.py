"""Train fresh networks on tensors with a :class:`~ddlight.recipe.TrainRecipe`, one by one or stacked.

The set is kept as tensors on its device; nothing goes through a DataLoader or a Lightning ``Trainer``
(a distilled set of tens to hundreds of samples fits in a batch or two, where a ``Trainer``'s per-epoch
overhead would dominate). Network ``r`` of ``repeats`` is initialised under ``torch.manual_seed(seed +
r)`` and draws its batch order and its augmentation from its own ``torch.Generator`` seeded
``seed + r``, so the two paths below train the same networks:

* **sequential**: each network with its own :class:`torch.optim.SGD`;
* **batched** (``recipe.batched``): the parameters and buffers of all networks are stacked
  (:func:`torch.func.stack_module_state`) and one :class:`torch.optim.SGD` steps them all; the
  forward runs under :func:`torch.func.vmap` over :func:`torch.func.functional_call`. The summed loss
  gives every slice exactly its network's gradient, and SGD (momentum, weight decay) acts elementwise,
  so each slice follows its sequential twin up to float rounding. Batch-norm running statistics are
  stacked buffers updated in place; dropout draws differ per network (``randomness="different"``) but
  come from the global RNG, so they are not those of the sequential path.

With ``recipe.precision == "bf16-mixed"`` every step of both paths runs under bfloat16 autocast
(:func:`step_autocast`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ddlight.augment import SpecAugment
from ddlight.networks import AudioNetwork, build_network
from ddlight.recipe.config import TrainRecipe

#: Builds one fresh, randomly initialised network (called under a seeded global RNG).
NetworkBuilder = Callable[[], nn.Module]
#: Told the number of network-epochs just trained (a progress bar's ``update``).
Progress = Callable[[int], Any]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against hard labels ``[B]`` or soft label distributions ``[B, K]``."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


class _Draws:
    """The random draws of one network: its batch order and its augmentation, from its own generator.

    Args:
        seed: Seed of the generator.
        device: Device of the training tensors (and of the generator).
        augment: Augmentation of every minibatch (None: none).
    """

    def __init__(self, seed: int, device: torch.device, augment: SpecAugment | None) -> None:
        self.generator = torch.Generator(device).manual_seed(seed)
        self.augment = augment

    def batches(self, size: int, batch_size: int) -> list[Tensor]:
        """One epoch of minibatch indices; a last batch of one item is left out (batch norm needs two)."""
        order = torch.randperm(size, generator=self.generator, device=self.generator.device).split(batch_size)
        return list(order[:-1] if size > 1 and len(order[-1]) == 1 else order)

    def inputs(self, x: Tensor, index: Tensor) -> Tensor:
        """The (augmented) minibatch ``x[index]``."""
        return self.augment(x[index], self.generator) if self.augment is not None else x[index]


def cpu_has_bf16() -> bool:
    """Whether this x86 CPU computes bfloat16 natively (AVX512-BF16 or AMX; False on other CPUs)."""
    # torch.cpu's probes are private (no public one in torch 2.13); a torch without them reports False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


#: Makes the autocast context of one training step (a fresh one per step: see :func:`step_autocast`).
Autocast = Callable[[], torch.autocast]


def step_autocast(recipe: TrainRecipe, device: torch.device) -> Autocast:
    """The autocast context of one training step with ``recipe`` on ``device`` (disabled for ``32-true``).

    One context per step, never one around the whole loop: autocast caches its bfloat16 copies of the
    weights until the outermost context exits, so a loop inside a single context would keep computing
    with the weights of the first step while SGD updates the float32 ones.

    Raises:
        ValueError: ``bf16-mixed`` on a CUDA device without bfloat16 support.
    """
    enabled = recipe.precision == "bf16-mixed"
    if enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16-mixed: {torch.cuda.get_device_name(device)} has no bfloat16; use 32-true")
    if enabled and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn("precision bf16-mixed on a CPU without bfloat16 instructions (AVX512-BF16, AMX) is emulated: "
                      "measured 1.7x (AVX-512) to 9x (AVX2) slower than 32-true", stacklevel=3)
    return partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=enabled)


def _optimizer(
    params: list[Tensor], recipe: TrainRecipe
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
    """The recipe's SGD over ``params`` and its learning-rate schedule."""
    optimizer = torch.optim.SGD(
        params, lr=recipe.learning_rate, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, recipe.milestones(), gamma=0.1)


def _step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """One optimisation step on ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _fit_sequential(
    network: nn.Module,
    x: Tensor,
    targets: Tensor,
    recipe: TrainRecipe,
    draws: _Draws,
    cast: Autocast,
    progress: Progress | None,
) -> None:
    """Train one network in place."""
    optimizer, scheduler = _optimizer(list(network.parameters()), recipe)
    network.train()
    for _ in range(recipe.epochs):
        for index in draws.batches(len(x), recipe.batch_size):
            with cast():
                loss = soft_cross_entropy(network(draws.inputs(x, index)), targets[index])
            _step(optimizer, loss)
        scheduler.step()
        if progress is not None:
            progress(1)


def _fit_stacked(
    networks: list[nn.Module],
    x: Tensor,
    targets: Tensor,
    recipe: TrainRecipe,
    draws: list[_Draws],
    cast: Autocast,
    progress: Progress | None,
) -> None:
    """Train networks of one architecture together on stacked parameters, then copy them back in place."""
    params, buffers = stack_module_state(networks)
    template = copy.deepcopy(networks[0]).to("meta").train()

    def loss(p: dict[str, Tensor], b: dict[str, Tensor], inputs: Tensor, target: Tensor) -> Tensor:
        return soft_cross_entropy(functional_call(template, (p, b), (inputs,)), target)

    # inputs stacked as [B, R, ...] (networks in dim 1): vmap then folds the networks into the channels
    # without copies, and the grouped convolutions' backward stays fast (several times slower with dim 0)
    losses = vmap(loss, in_dims=(0, 0, 1, 0), randomness="different")
    optimizer, scheduler = _optimizer(list(params.values()), recipe)
    for _ in range(recipe.epochs):
        orders = [d.batches(len(x), recipe.batch_size) for d in draws]
        for indices in zip(*orders):
            inputs = torch.stack([d.inputs(x, index) for d, index in zip(draws, indices)], dim=1)
            with cast():
                loss = losses(params, buffers, inputs, torch.stack([targets[i] for i in indices])).sum()
            _step(optimizer, loss)
        scheduler.step()
        if progress is not None:
            progress(len(networks))
    stacked = params | buffers
    with torch.no_grad():
        for r, network in enumerate(networks):
            for name, tensor in (*network.named_parameters(), *network.named_buffers()):
                tensor.copy_(stacked[name][r])


def fit_networks(
    build: NetworkBuilder,
    x: Tensor,
    targets: Tensor,
    recipe: TrainRecipe,
    repeats: int = 1,
    progress: Progress | None = None,
) -> list[nn.Module]:
    """Train ``repeats`` fresh networks from ``build`` on ``(x, targets)``, network ``r`` seeded ``recipe.seed + r``.

    The global RNG state is restored afterwards; training happens on the device of ``x``, also when the
    caller is under ``torch.no_grad``.

    Args:
        build: Makes one fresh network (every call the same architecture).
        x: Training features ``[N, C, F, T]``.
        targets: Hard labels ``[N]`` or soft label distributions ``[N, K]``, on the device of ``x``.
        recipe: How to train (its ``lr`` must be a number; ``batched`` picks the path, see the module
            docstring).
        repeats: Number of networks.
        progress: Called after every epoch with the number of network-epochs it trained (``repeats *
            recipe.epochs`` in all), e.g. a progress bar's ``update``.

    Returns:
        The trained networks, in eval mode, in seed order.

    Raises:
        ValueError: If the set is empty, its targets do not match it, ``repeats < 1``, the recipe's
            ``lr`` is ``auto``, or it asks for ``bf16-mixed`` on a GPU without bfloat16.
    """
    if len(x) == 0 or len(x) != len(targets):
        raise ValueError(f"{len(x)} training samples but {len(targets)} targets")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    x, targets = x.detach(), targets.detach()
    augment = SpecAugment().train() if recipe.augment else None
    seeds = [recipe.seed + r for r in range(repeats)]
    draws = [_Draws(seed, x.device, augment) for seed in seeds]
    cast = step_autocast(recipe, x.device)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.enable_grad():
        networks = []
        for seed, draw in zip(seeds, draws):
            torch.manual_seed(seed)
            networks.append(build().to(x.device))
            if not (recipe.batched and repeats > 1):
                _fit_sequential(networks[-1], x, targets, recipe, draw, cast, progress)
        if recipe.batched and repeats > 1:
            _fit_stacked(networks, x, targets, recipe, draws, cast, progress)
    return [network.eval() for network in networks]


def fit_network(
    x: Tensor,
    targets: Tensor,
    num_classes: int,
    recipe: TrainRecipe,
    architecture: str = "convnet",
    network_options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> AudioNetwork:
    """Train one fresh network of a registered ``architecture`` (seed ``recipe.seed``): :func:`fit_networks`.

    Args:
        x: Training features ``[N, C, F, T]``.
        targets: Hard labels ``[N]`` or soft label distributions ``[N, K]``.
        num_classes: Outputs of the network.
        recipe: How to train (numeric ``lr``).
        architecture: Name in :data:`ddlight.networks.NETWORKS`.
        network_options: Its constructor options.
        progress: Called with 1 after every epoch (see :func:`fit_networks`).

    Returns:
        The trained network, in eval mode, on the device of ``x``.
    """
    build = partial(build_network, architecture, tuple(x.shape[1:]), num_classes, **dict(network_options or {}))
    return fit_networks(build, x, targets, recipe, progress=progress)[0]
