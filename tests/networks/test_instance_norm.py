"""Tests for ddlight.networks.instance_norm: the closed-form second derivative equals PyTorch's."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from ddlight.networks import build_network
from ddlight.networks.instance_norm import InstanceNorm, _InstanceNormFunction


def inputs(shape: tuple[int, ...] = (3, 4, 5, 6), offset: float = 3.0) -> tuple[Tensor, Tensor, Tensor]:
    """float64 input (its mean away from 0, as after a convolution), weight and bias that need gradients."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + offset
    weight = torch.randn(shape[1], generator=generator, dtype=torch.float64)
    bias = torch.randn(shape[1], generator=generator, dtype=torch.float64)
    return x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()


def instance_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The closed-form instance norm as a function."""
    return _InstanceNormFunction.apply(x, weight, bias, 1e-5)


def test_first_and_second_derivatives_pass_gradcheck() -> None:
    assert torch.autograd.gradcheck(instance_norm, inputs())
    assert torch.autograd.gradgradcheck(instance_norm, inputs())
    assert torch.autograd.gradgradcheck(instance_norm, inputs((2, 3, 7), offset=-1.0))  # 1-D feature maps


def second_order(norm: nn.Module, x: Tensor) -> list[Tensor]:
    """An MTT-shaped second-order quantity: the gradient of a function of the (create_graph) gradient."""
    loss = (norm(x) ** 3).sum()
    grads = torch.autograd.grad(loss, [x, norm.weight, norm.bias], create_graph=True)
    outer = sum((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum() for g in grads)
    return [*grads, *torch.autograd.grad(outer, [x, norm.weight, norm.bias])]


def test_matches_group_norm_to_float64_rounding() -> None:
    x, weight, bias = inputs()
    reference = nn.GroupNorm(4, 4).double()
    fast = InstanceNorm(4).double()
    for module in (reference, fast):
        module.weight.data.copy_(weight.detach())
        module.bias.data.copy_(bias.detach())
    torch.testing.assert_close(fast(x), reference(x), rtol=0, atol=1e-12)
    for got, expected in zip(second_order(fast, x), second_order(reference, x), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_runs_in_float32_under_bfloat16_autocast() -> None:
    reference, fast = nn.GroupNorm(4, 4), InstanceNorm(4)
    x = torch.randn(2, 4, 5, 6).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(x.float()))
