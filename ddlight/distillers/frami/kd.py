"""Knowledge distillation of a student from a teacher on synthetic inputs (the second half of FRAMI).

The student never sees a label: on every (augmented) input batch it matches the teacher's softened
class distribution (Hinton et al., 2015) and, with hidden-state reuse, the teacher's hidden states
before and after the statistics-pooling layer (FRAMI, Kang et al., ICASSP 2023). The student may be
narrower than the teacher, so its states pass through learned projections (a 1x1 convolution for the
frame-level states, a linear map for the pooled statistics, as in FitNets) before the mean squared
error is taken.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddlight.augment import SpecAugment
from ddlight.networks import AudioNetwork, HiddenStates
from ddlight.recipe import Progress


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    The ``T^2`` factor keeps the gradient scale independent of the temperature.
    """
    teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    student = F.log_softmax(student_logits / temperature, dim=-1)
    return temperature**2 * F.kl_div(student, teacher, reduction="batchmean", log_target=True)


def has_hidden_states(network: nn.Module) -> bool:
    """Whether ``network`` exposes ``hidden_states(x)`` (a statistics-pooling network)."""
    return callable(getattr(network, "hidden_states", None))


def check_hidden_states(teacher: nn.Module, student: nn.Module) -> None:
    """Raise unless both networks expose ``hidden_states(x)`` (statistics-pooling networks).

    Raises:
        ValueError: Naming the network that lacks them.
    """
    for role, network in (("teacher", teacher), ("student", student)):
        if not has_hidden_states(network):
            raise ValueError(
                f"hidden-state reuse needs a {role} with a statistics-pooling layer (network 'statpool'), "
                f"got {type(network).__name__}; use a statpool {role} or switch hidden-state reuse off"
            )


class HiddenStateReuse(nn.Module):
    """Projections of the student's hidden states onto the teacher's, and their mean squared error.

    Args:
        student_dim: Frame-level channels ``D`` of the student (its pooled size is ``2D``).
        teacher_dim: Frame-level channels of the teacher.
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.frames = nn.Conv1d(student_dim, teacher_dim, kernel_size=1)
        self.pooled = nn.Linear(2 * student_dim, 2 * teacher_dim)

    def forward(self, student: HiddenStates, teacher: HiddenStates) -> Tensor:
        """MSE before pooling (``[B, D, T]``) plus MSE after pooling (``[B, 2D]``)."""
        before = F.mse_loss(self.frames(student.frames), teacher.frames)
        after = F.mse_loss(self.pooled(student.pooled), teacher.pooled)
        return before + after


def distil_student(
    teacher: AudioNetwork,
    student: AudioNetwork,
    inputs: Callable[[int], Tensor],
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    temperature: float = 4.0,
    hidden_weight: float = 1.0,
    augment: SpecAugment | None = None,
    progress: Progress | None = None,
) -> AudioNetwork:
    """Train ``student`` to imitate ``teacher`` on inputs drawn from ``inputs`` (Adam, cosine schedule).

    Args:
        teacher: The trained network (kept in eval mode, never updated).
        student: A freshly initialised network on the same device.
        inputs: ``inputs(n)`` returns a batch of ``n`` input features (e.g. rows of a synthetic set, or
            fresh samples of a generator); no labels are used.
        steps: Optimisation steps.
        batch_size: Inputs per step.
        lr: Initial Adam learning rate (cosine-annealed to 0).
        temperature: Softening temperature of :func:`kd_loss`.
        hidden_weight: Weight of the hidden-state term; 0 trains on the logits only.
        augment: Augmentation applied to every batch before both networks see it.
        progress: Called with 1 after every step (a progress bar's ``update``).

    Returns:
        The student, in eval mode.

    Raises:
        ValueError: If ``steps`` or ``batch_size`` is below 1, or hidden states are asked of a network
            that has no statistics-pooling layer.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    reuse: HiddenStateReuse | None = None
    if hidden_weight > 0:
        check_hidden_states(teacher, student)
        reuse = HiddenStateReuse(student.frame_dim, teacher.frame_dim).to(next(student.parameters()).device)
    params = list(student.parameters()) + (list(reuse.parameters()) if reuse is not None else [])
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    teacher.eval()
    student.train()
    if augment is not None:
        augment.train()
    with torch.enable_grad():
        for _ in range(steps):
            x = inputs(batch_size).detach()
            if augment is not None:
                x = augment(x)
            with torch.no_grad():
                target = teacher.hidden_states(x) if reuse is not None else None
                teacher_logits = target.logits if target is not None else teacher(x)
            if reuse is not None:
                states = student.hidden_states(x)
                loss = kd_loss(states.logits, teacher_logits, temperature) + hidden_weight * reuse(states, target)
            else:
                loss = kd_loss(student(x), teacher_logits, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if progress is not None:
                progress(1)
    return student.eval()
