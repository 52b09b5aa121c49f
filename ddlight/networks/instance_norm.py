"""Instance norm with a closed-form second derivative, for distillers that differentiate through training.

MTT (and DC/DSA's gradient matching) backpropagate through the *backward* pass of the student: the
instance norm's gradient is itself differentiated. Asked for a gradient with ``create_graph``, PyTorch runs
the group-norm backward as a composite of about eight operations over the feature map, each recorded, and
their derivative as about sixteen more (counted with ``torch.profiler``); together they took a third of an
MTT update on CPU (BENCHMARKS.md, "MTT update: time"). Here the first backward is PyTorch's fused kernel (one
pass) and its derivative is written out by hand: five per-instance reductions and nine element-wise passes.

Notation for one instance (sample ``n``, channel ``c``) of ``M`` positions: ``x̂ = (x − μ) r`` with
``r = 1/√(var + eps)``, ``y = w x̂ + b``. Given ``g = ∂L/∂y`` the first backward returns
``dx = r w P(g)``, ``dw = Σ g x̂``, ``db = Σ g`` with the projection ``P(v) = v − mean(v) − x̂ mean(v x̂)``
(symmetric). Its backward takes ``a, α, β`` (the gradients of ``dx, dw, db``) and returns the gradients of
``g``, ``x`` and ``w``; they reduce to linear combinations of ``g``, ``a`` and ``x − μ`` whose per-instance
coefficients need only ``mean(g)``, ``mean(a)``, ``mean(g x̂)``, ``mean(a x̂)`` and ``mean(a g)``.
The result equals PyTorch's double backward to float64 rounding (``tests/networks/test_instance_norm.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _InstanceNormBackward(torch.autograd.Function):
    """The first backward of instance norm (PyTorch's kernel), differentiable once in closed form."""

    @staticmethod
    def forward(ctx, g: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor) -> tuple[Tensor, ...]:
        n, c = x.shape[:2]
        dx, dw, db = torch.ops.aten.native_group_norm_backward(
            g, x, mean, rstd, weight, n, c, x.shape[2:].numel(), c, [True, True, True]
        )
        ctx.save_for_backward(g, x, weight, mean, rstd)
        return dx, dw, db

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, a: Tensor, grad_dw: Tensor, grad_db: Tensor) -> tuple[Tensor | None, ...]:
        g, x, weight, mean, rstd = ctx.saved_tensors
        shape, (n, c), m = x.shape, x.shape[:2], x.shape[2:].numel()
        # [N, C, M] per instance; per-instance scalars are [N, C, 1], per-channel ones [C, 1].
        g, a = g.reshape(n, c, m), a.reshape(n, c, m)
        r = rstd.view(n, c, 1)
        w, alpha, beta = weight.view(c, 1), grad_dw.view(c, 1), grad_db.view(c, 1)
        xc = x.reshape(n, c, m) - mean.view(n, c, 1)
        g0, a0 = g.mean(-1, keepdim=True), a.mean(-1, keepdim=True)
        g1 = torch.linalg.vecdot(g, xc).unsqueeze(-1) * (r / m)  # mean(g x̂)
        a1 = torch.linalg.vecdot(a, xc).unsqueeze(-1) * (r / m)  # mean(a x̂)
        core = torch.linalg.vecdot(a, g).unsqueeze(-1) / m - a0 * g0 - a1 * g1  # mean(a P(g))
        grad_w = (r * m * core).sum(0).view(c)
        # ∂/∂x̂ = k_g g + k_a a (x̂ held, r held); ∂/∂r = m w core; both pulled back through x̂(x) and r(x).
        k_g, k_a = alpha - r * a1 * w, -r * w * g1
        k_x = -r * (k_g * g1 + k_a * a1) - r * r * w * core
        grad_x = torch.addcmul(r * k_g * g, r * k_a, a).addcmul_(k_x * r, xc).sub_(r * (k_g * g0 + k_a * a0))
        wr = w * r
        grad_g = torch.addcmul((alpha - wr * a1) * r * xc, wr, a).add_(beta - wr * a0)
        return grad_g.view(shape), grad_x.view(shape), grad_w, None, None


class _InstanceNormFunction(torch.autograd.Function):
    """Affine instance norm of ``[N, C, *spatial]`` whose backward is :class:`_InstanceNormBackward`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        n, c = x.shape[:2]
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, x.shape[2:].numel(), c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        return (*_InstanceNormBackward.apply(g.contiguous(), x, weight, mean, rstd), None)


class InstanceNorm(nn.GroupNorm):
    """``GroupNorm(channels, channels)`` (affine) whose second derivative is computed in closed form.

    Same parameters, state-dict keys and outputs as the ``nn.GroupNorm`` it replaces; works under
    :func:`torch.func.functional_call` but not under :func:`torch.func.vmap` (the evaluation's batched
    networks keep ``nn.GroupNorm``). The input is cast to the parameters' dtype, so under autocast it runs
    in float32, as ``group_norm`` does.

    Args:
        channels: Number of channels (one group each).
        eps: Added to the variance.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, channels, eps=eps, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return _InstanceNormFunction.apply(x.to(self.weight.dtype).contiguous(), self.weight, self.bias, self.eps)

