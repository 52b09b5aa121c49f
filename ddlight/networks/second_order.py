"""Convolution and average pooling with fast second derivatives, for distillers that differentiate training.

MTT (and DC/DSA's gradient matching) differentiate the student's *backward* pass. PyTorch differentiates a
convolution's backward with ``_convolution_double_backward``, which computes the weight's part of it (the
gradient of ``∂L/∂x`` with respect to ``∂L/∂y`` and ``w``) as a convolution whose kernel is the whole
feature map (batch and channels swapped): on CPU that took 2.2× the time of the dedicated weight-gradient
kernel at MTT's shapes (70 against 32 ms, ``[100, 128, 10, 16]`` maps, one thread; BENCHMARKS.md, "MTT
update: time"). :class:`Conv2d` writes the second derivative out with PyTorch's own forward and
``convolution_backward`` kernels. Given ``gy = ∂L/∂y`` the first backward returns ``gx = Dxᵀ(gy; w)``,
``gw = Dwᵀ(x; gy)``, ``gb = Σ gy``; with ``a, α, β`` the gradients of ``gx, gw, gb`` its derivative is

* with respect to ``gy``: ``conv(a, w) + conv(x, α) + β`` (two forward convolutions),
* with respect to ``x``: ``Dxᵀ(gy; α)`` (the input-gradient kernel with ``α`` as the weight),
* with respect to ``w``: ``Dwᵀ(a; gy)`` (the weight-gradient kernel with ``a`` as the input).

:class:`AvgPool2d` (kernel equal to stride, no padding: the ConvNet's 2×2 pooling) sums strided views instead
of running ``avg_pool2d`` (18.5 against 6.9 ms forward, 18.9 against 9.4 ms backward at ``[100, 128, 20, 32]``).
Pooling is linear, so the derivative of its backward (spreading each gradient over its window) is the pooling
itself. Both equal PyTorch's results to float64 rounding (``tests/networks/test_second_order.py``).

:func:`for_unrolling` swaps these and :class:`~ddlight.networks.instance_norm.InstanceNorm` into a network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ddlight.networks.instance_norm import InstanceNorm

#: ``(stride, padding, dilation, groups, has_bias)`` of a convolution, as its kernels take them.
ConvOptions = tuple[list[int], list[int], list[int], int, bool]

_conv_backward = torch.ops.aten.convolution_backward.default


def _conv(x: Tensor, weight: Tensor, options: ConvOptions, bias: Tensor | None = None) -> Tensor:
    """``conv2d(x, weight, bias)`` under ``options``."""
    stride, padding, dilation, groups, _ = options
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _backward(gy: Tensor, x: Tensor, weight: Tensor, options: ConvOptions, mask: list[bool]) -> tuple[Tensor, ...]:
    """PyTorch's convolution backward kernel: the gradients of ``x``, ``weight`` and the bias selected by ``mask``."""
    stride, padding, dilation, groups, has_bias = options
    bias_sizes = [weight.shape[0]] if has_bias and mask[2] else None
    return _conv_backward(gy, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups, mask)


class _Conv2dBackward(torch.autograd.Function):
    """The first backward of a convolution (PyTorch's kernel), differentiable once in closed form."""

    @staticmethod
    def forward(ctx, gy: Tensor, x: Tensor, weight: Tensor, options: ConvOptions, x_grad: bool) -> tuple[Tensor, ...]:
        gx, gw, gb = _backward(gy, x, weight, options, [x_grad, True, options[4]])
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: its terms are skipped
        ctx.save_for_backward(gy, x, weight)
        ctx.options = options
        return gx, gw, gb

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, a: Tensor | None, alpha: Tensor | None, beta: Tensor | None) -> tuple[Tensor | None, ...]:
        gy, x, weight = ctx.saved_tensors
        options = ctx.options
        grad_gy = grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            if a is not None:
                grad_gy = _conv(a, weight, options)
            if alpha is not None:
                term = _conv(x, alpha, options)
                grad_gy = term if grad_gy is None else grad_gy.add_(term)
            if beta is not None:  # only when the convolution has a bias (gb is None otherwise)
                term = beta.view(1, -1, 1, 1)
                grad_gy = term.expand_as(gy) if grad_gy is None else grad_gy.add_(term)
        if ctx.needs_input_grad[1] and alpha is not None:
            grad_x = _backward(gy, x, alpha, options, [True, False, False])[0]
        if ctx.needs_input_grad[2] and a is not None:
            grad_w = _backward(gy, a, weight, options, [False, True, False])[1]
        return grad_gy, grad_x, grad_w, None, None


class _Conv2dFunction(torch.autograd.Function):
    """``conv2d`` whose backward is :class:`_Conv2dBackward`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, options: ConvOptions) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.options = options
        return _conv(x, weight, options, bias)

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        gx, gw, gb = _Conv2dBackward.apply(gy.contiguous(), x, weight, ctx.options, ctx.needs_input_grad[0])
        return gx, gw, gb, None


def _zero_padded(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` pads with zeros given as numbers (what :class:`Conv2d` computes)."""
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding given as numbers) whose second derivative runs PyTorch's fast kernels.

    Same parameters, state-dict keys and outputs as the ``nn.Conv2d`` it replaces; works under
    :func:`torch.func.functional_call` but not under :func:`torch.func.vmap`. Under autocast the input and
    parameters are cast to the autocast type first (recorded casts, as autocast's own), so the convolution and
    both its derivatives run in that type.
    """

    def __init__(self, *args, **kwargs) -> None:
        """Take ``nn.Conv2d``'s arguments.

        Raises:
            ValueError: For padding other than zeros given as numbers (``padding_mode``, ``"same"``).
        """
        super().__init__(*args, **kwargs)
        if not _zero_padded(self):
            raise ValueError(f"Conv2d takes zero padding given as numbers, got padding={self.padding!r}, "
                             f"padding_mode={self.padding_mode!r}; keep nn.Conv2d for these")

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device) and x.dtype != torch.float64:  # autocast leaves float64 alone
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        options = (list(self.stride), list(self.padding), list(self.dilation), self.groups, bias is not None)
        with torch.autocast(device, enabled=False):
            return _Conv2dFunction.apply(x, weight, bias, options)


def _pool(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    """Average of non-overlapping ``kernel`` windows of ``[..., H, W]`` (trailing rows and columns dropped)."""
    kh, kw = kernel
    x = x[..., : x.shape[-2] // kh * kh, : x.shape[-1] // kw * kw]
    views = [x[..., i::kh, j::kw] for i in range(kh) for j in range(kw)]
    total = views[0] + views[1] if len(views) > 1 else views[0].clone()
    for view in views[2:]:
        total += view
    return total.mul_(1 / (kh * kw))


def _spread(g: Tensor, shape: torch.Size, kernel: tuple[int, int]) -> Tensor:
    """The backward of :func:`_pool`: each gradient spread evenly over its window, zero on dropped rows/columns."""
    kh, kw = kernel
    *lead, h, w = g.shape
    out = (g * (1 / (kh * kw))).unsqueeze(-1).expand(*lead, h, w, kw).reshape(*lead, h, w * kw)
    out = out.unsqueeze(-2).expand(*lead, h, kh, w * kw).reshape(*lead, h * kh, w * kw)
    if out.shape[-2:] != shape[-2:]:
        out = F.pad(out, (0, shape[-1] - out.shape[-1], 0, shape[-2] - out.shape[-2]))
    return out


class _Spread(torch.autograd.Function):
    """:func:`_spread`, whose derivative is the pooling."""

    @staticmethod
    def forward(ctx, g: Tensor, shape: torch.Size, kernel: tuple[int, int]) -> Tensor:
        ctx.kernel = kernel
        return _spread(g, shape, kernel)

    @staticmethod
    def backward(ctx, gg: Tensor) -> tuple[Tensor | None, ...]:
        return _AvgPoolFunction.apply(gg, ctx.kernel), None, None


class _AvgPoolFunction(torch.autograd.Function):
    """:func:`_pool`, whose backward is :class:`_Spread`."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: tuple[int, int]) -> Tensor:
        ctx.shape, ctx.kernel = x.shape, kernel
        return _pool(x, kernel)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        return _Spread.apply(g, ctx.shape, ctx.kernel), None


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` with kernel equal to stride and no padding, computed from strided views.

    Args:
        kernel_size: Window ``(kh, kw)`` (or one size for both); also the stride.
    """

    def __init__(self, kernel_size: int | tuple[int, int]) -> None:
        super().__init__(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return _AvgPoolFunction.apply(x, nn.modules.utils._pair(self.kernel_size))


def _replacement(module: nn.Module) -> nn.Module | None:
    """The fast twin of a layer :func:`for_unrolling` swaps, or ``None`` to keep it."""
    kind = type(module)
    if kind is nn.GroupNorm and module.affine and module.num_groups == module.num_channels:
        fast = InstanceNorm(module.num_channels, eps=module.eps)
        fast.weight, fast.bias = module.weight, module.bias
        return fast
    if kind is nn.Conv2d and _zero_padded(module):
        fast = Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                      module.dilation, module.groups, module.bias is not None, device="meta")
        fast.weight, fast.bias = module.weight, module.bias
        return fast
    pairs = nn.modules.utils._pair
    if kind is nn.AvgPool2d and pairs(module.stride) == pairs(module.kernel_size) and pairs(module.padding) == (0, 0) \
            and not module.ceil_mode and module.divisor_override is None:
        return AvgPool2d(module.kernel_size)
    return None


def for_unrolling(network: nn.Module) -> nn.Module:
    """Swap in the layers with fast second derivatives, for a network distillers differentiate through twice.

    Replaced: affine instance norms (``GroupNorm`` with a group per channel) by
    :class:`~ddlight.networks.instance_norm.InstanceNorm`, zero-padded ``nn.Conv2d`` by :class:`Conv2d`
    and ``nn.AvgPool2d`` with kernel equal to stride and no padding by :class:`AvgPool2d`. The first
    ``nn.Conv2d`` (in module order: the one that reads the network's input) is kept: a custom autograd
    function cannot tell that the unroll's inner gradient does not need its input gradient, which PyTorch's
    convolution skips; PyTorch's slow path is not taken there either, as it needs that gradient.
    Parameters are kept (the same tensors), so state-dict keys, loaded weights and ``functional_call``
    work unchanged. Networks with these layers no longer run under :func:`torch.func.vmap`.

    Args:
        network: The network, changed in place.

    Returns:
        ``network``.
    """
    first_conv = next((m for m in network.modules() if type(m) is nn.Conv2d), None)
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            fast = None if child is first_conv else _replacement(child)
            if fast is not None:
                setattr(parent, name, fast)
    return network
