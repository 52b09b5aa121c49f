"""Tests for ddlight.networks.second_order: fast second derivatives equal PyTorch's, and the swap."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from ddlight.networks import build_network, for_unrolling
from ddlight.networks.instance_norm import InstanceNorm
from ddlight.networks.second_order import AvgPool2d, Conv2d


def float64(*shape: int, seed: int = 0) -> Tensor:
    """A float64 tensor that needs gradients."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


CONVS = [  # (in, out, kernel, stride, padding, dilation, groups, bias)
    (3, 4, 3, 1, 1, 1, 1, True),
    (4, 6, (3, 1), (2, 1), (1, 0), 1, 2, False),
    (2, 3, 3, 1, 2, 2, 1, True),
]


def twins(spec: tuple) -> tuple[nn.Conv2d, Conv2d]:
    """A float64 ``nn.Conv2d`` and a :class:`Conv2d` with the same parameters."""
    reference = nn.Conv2d(*spec[:7], bias=spec[7]).double()
    fast = Conv2d(*spec[:7], bias=spec[7]).double()
    fast.load_state_dict(reference.state_dict())
    return reference, fast


@pytest.mark.parametrize("spec", CONVS)
def test_convolution_first_and_second_derivatives_pass_gradcheck(spec: tuple) -> None:
    _, fast = twins(spec)
    params = [p.detach().requires_grad_() for p in fast.parameters()]

    def conv(x: Tensor, *p: Tensor) -> Tensor:
        return functional_call(fast, dict(zip([n for n, _ in fast.named_parameters()], p, strict=True)), (x,))

    x = float64(2, spec[0], 7, 6)
    assert torch.autograd.gradcheck(conv, (x, *params))
    assert torch.autograd.gradgradcheck(conv, (x, *params))


def second_order(layer: nn.Module, x: Tensor) -> list[Tensor]:
    """An MTT-shaped second-order quantity: the gradient of a function of the (create_graph) gradient.

    Taken with respect to the parameters, and to ``x`` too when it needs gradients.
    """
    inputs = [x] * x.requires_grad + list(layer.parameters())
    loss = (layer(x) ** 3).sum()
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    outer = sum((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum() for g in grads)
    return [*grads, *torch.autograd.grad(outer, inputs)]


@pytest.mark.parametrize("spec", CONVS)
def test_convolution_matches_pytorch_to_float64_rounding(spec: tuple) -> None:
    reference, fast = twins(spec)
    x = float64(3, spec[0], 9, 8)
    torch.testing.assert_close(fast(x), reference(x), rtol=0, atol=1e-12)
    for got, expected in zip(second_order(fast, x), second_order(reference, x), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


POOLS = [(2, (8, 6)), (2, (5, 7)), ((1, 2), (3, 9)), ((2, 1), (5, 4)), (3, (7, 9))]  # (kernel, input size)


@pytest.mark.parametrize(("kernel", "size"), POOLS)
def test_pooling_matches_pytorch_to_float64_rounding(kernel: int | tuple[int, int], size: tuple[int, int]) -> None:
    reference, fast = nn.AvgPool2d(kernel), AvgPool2d(kernel)
    x = float64(2, 3, *size)
    torch.testing.assert_close(fast(x), reference(x), rtol=0, atol=1e-12)
    for got, expected in zip(second_order(fast, x), second_order(reference, x), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradgradcheck(fast, (x,))


def test_convolution_runs_in_the_autocast_type() -> None:
    reference, fast = twins(CONVS[0])
    reference, fast = reference.float(), fast.float()
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = fast(x), reference(x)
        (gx_fast,) = torch.autograd.grad(out.float().square().sum(), x, create_graph=True)
        (gx_ref,) = torch.autograd.grad(expected.float().square().sum(), x, create_graph=True)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)
    assert gx_fast.dtype == x.dtype
    torch.testing.assert_close(gx_fast, gx_ref)
    meta = [torch.autograd.grad(g.sum(), layer.weight)[0] for g, layer in ((gx_fast, fast), (gx_ref, reference))]
    assert meta[0].dtype == torch.float32
    torch.testing.assert_close(meta[0], meta[1], rtol=2e-2, atol=2e-2)


def test_swap_keeps_parameters_and_leaves_other_layers() -> None:
    network = build_network("convnet", (1, 16, 16), 3, width=8)
    layer_norm, padded = nn.GroupNorm(1, 8), nn.Conv2d(8, 8, 3, padding="same")
    network.extra = nn.Sequential(layer_norm, padded, nn.AvgPool2d(3, stride=1))
    before = dict(network.named_parameters())
    keys = list(network.state_dict())
    first_conv = network.features[0]
    for_unrolling(network)
    kinds = [type(m) for m in network.features]
    assert network.features[0] is first_conv  # reads the input: PyTorch's kernel skips its unneeded gradient
    assert (kinds.count(Conv2d), kinds.count(nn.Conv2d)) == (2, 1)  # the other two convolutions of depth 3
    assert kinds.count(InstanceNorm) == kinds.count(AvgPool2d) == 3
    assert network.extra[0] is layer_norm and network.extra[1] is padded and type(network.extra[2]) is nn.AvgPool2d
    assert list(network.state_dict()) == keys
    assert all(p is before[name] for name, p in network.named_parameters())


def test_swapped_network_unrolls_like_the_original() -> None:
    """Two differentiable SGD steps through a ConvNet: the set's meta-gradient is unchanged by the swap."""
    torch.manual_seed(0)
    plain = build_network("convnet", (1, 16, 12), 3, width=8).double()
    fast = for_unrolling(build_network("convnet", (1, 16, 12), 3, width=8).double())
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(6, 1, 16, 12, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    meta = []
    for network in (plain, fast):
        images = x.clone().requires_grad_()
        params = {name: p.detach().requires_grad_() for name, p in network.named_parameters()}
        for _ in range(2):
            loss = F.cross_entropy(functional_call(network, params, (images,)), y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {name: p - 0.1 * g for (name, p), g in zip(params.items(), grads, strict=True)}
        outer = functional_call(network, params, (x,)).logsumexp(1).sum()
        meta.append(torch.autograd.grad(outer, images)[0])
    assert meta[0].abs().max() > 0
    torch.testing.assert_close(meta[1], meta[0], rtol=1e-9, atol=1e-12)


def test_convolution_of_an_input_without_gradient() -> None:
    """The first backward skips the input's gradient; the parameters' second derivatives still match."""
    reference, fast = twins(CONVS[0])
    x = float64(2, 3, 6, 5).detach()
    for got, expected in zip(second_order(fast, x), second_order(reference, x), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options", [{"padding": "same"}, {"padding": 1, "padding_mode": "reflect"}])
def test_convolution_refuses_other_padding(options: dict) -> None:
    with pytest.raises(ValueError, match="zero padding"):
        Conv2d(2, 2, 3, **options)


def test_swap_takes_pools_whose_stride_is_spelled_differently() -> None:
    network = nn.Sequential(nn.AvgPool2d(2, stride=(2, 2)), nn.AvgPool2d((2, 1), stride=(2, 1)))
    assert [type(m) for m in for_unrolling(network)] == [AvgPool2d, AvgPool2d]
