"""Sharpness-aware minimisation (Foret et al., ICLR 2021) around a base optimiser: FTD's flat expert trajectories.

FTD (Du et al., CVPR 2023) trains the experts of trajectory matching with sharpness-aware minimisation so
that their trajectories are flatter and a synthetic set that matches them generalises better. Each update
evaluates the gradient at ``w + ρ g / ‖g‖`` (the worst nearby point to first order) and applies it at ``w``
with the base optimiser. FTD uses GSAM (SAM plus a surrogate-gap term); this is plain SAM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class SAM(torch.optim.Optimizer):
    """SAM around ``base``: two gradient evaluations per step, the ascent radius per parameter group.

    Each parameter group is perturbed by ``rho`` times its own normalised gradient, so networks trained
    side by side in separate groups (several experts at once) stay independent. ``step`` needs the
    closure that recomputes the loss and its gradients (Lightning passes one in automatic optimisation);
    :attr:`perturbed` is true while that closure runs at the perturbed point, so a training step can
    skip its logging there.

    Args:
        params: Parameters or parameter groups.
        base: Optimiser class of the actual update (e.g. :class:`torch.optim.SGD`).
        rho: Radius of the ascent step (FTD: 0.01).
        **kwargs: Arguments of ``base`` (``lr``, ``momentum``, ...).

    Raises:
        ValueError: If ``rho`` is not positive.
    """

    def __init__(self, params: Iterable[Any], base: type[torch.optim.Optimizer], rho: float, **kwargs: Any) -> None:
        if rho <= 0:
            raise ValueError(f"SAM needs rho > 0, got {rho}")
        super().__init__(params, {"rho": rho, **kwargs})
        self.base = base(self.param_groups, **kwargs)
        self.param_groups = self.base.param_groups
        self.perturbed = False

    def state_dict(self) -> dict[str, Any]:
        """The base optimiser's state (its momentum buffers live there) and the groups, ``rho`` included."""
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """Gradient at ``w`` (closure), ascend to ``w + ε``, gradient there (closure), back to ``w``, base step.

        Raises:
            RuntimeError: Without a closure (e.g. float16 training with a gradient scaler).
        """
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that recomputes the loss and its gradients; float16 "
                               "training with a gradient scaler does not pass one: use 32-true or bf16-mixed")
        with torch.enable_grad():
            loss = closure()
        shifts: list[tuple[Tensor, Tensor]] = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            scale = group["rho"] / (norm + 1e-12)
            for p in params:
                shift = p.grad * scale
                p.add_(shift)
                shifts.append((p, shift))
        self.zero_grad(set_to_none=True)
        self.perturbed = True
        try:
            with torch.enable_grad():
                closure()
        finally:
            self.perturbed = False
            for p, shift in shifts:
                p.sub_(shift)
        self.base.step()
        return loss
