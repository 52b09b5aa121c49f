"""Knowledge distillation: the KD loss, hidden-state reuse and a student that learns its teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddlight.distillers.frami.kd import HiddenStateReuse, distil_student, kd_loss
from ddlight.networks import HiddenStates, build_network

SHAPE = (2, 6, 12)


def test_kd_loss_is_scaled_kl_divergence() -> None:
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    student = torch.tensor([[0.5, 0.5, 0.0]])
    t = 2.0
    p, q = F.softmax(teacher / t, -1), F.softmax(student / t, -1)
    expected = t**2 * (p * (p.log() - q.log())).sum()
    torch.testing.assert_close(kd_loss(student, teacher, t), expected)
    assert float(kd_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-7)


def test_hidden_state_reuse_is_zero_for_a_perfect_projection() -> None:
    reuse = HiddenStateReuse(student_dim=3, teacher_dim=3)
    with torch.no_grad():
        reuse.frames.weight.copy_(torch.eye(3).unsqueeze(-1))
        reuse.frames.bias.zero_()
        reuse.pooled.weight.copy_(torch.eye(6))
        reuse.pooled.bias.zero_()
    states = HiddenStates(torch.randn(4, 3, 5), torch.randn(4, 6), torch.randn(4, 2))
    assert float(reuse(states, states)) == pytest.approx(0.0, abs=1e-10)
    shifted = HiddenStates(states.frames + 1.0, states.pooled + 2.0, states.logits)
    assert float(reuse(states, shifted)) == pytest.approx(1.0 + 4.0)  # MSE of a constant offset


def rule_labels(x: torch.Tensor) -> torch.Tensor:
    """Four classes from the signs of the two channels' means: a rule a small network learns quickly."""
    means = x.mean(dim=(2, 3))
    return (means[:, 0] > 0).long() + 2 * (means[:, 1] > 0).long()


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    """A statpool teacher trained on :func:`rule_labels` (its predictions cover all four classes)."""
    torch.manual_seed(0)
    net = build_network("statpool", SHAPE, 4, width=16, embed_dim=16)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(400):
        x = torch.randn(64, *SHAPE)
        loss = F.cross_entropy(net(x), rule_labels(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])
def test_student_learns_to_agree_with_the_teacher(teacher: torch.nn.Module, hidden_weight: float) -> None:
    torch.manual_seed(1)
    student = build_network("statpool", SHAPE, 4, width=8, embed_dim=8)
    probe = torch.randn(256, *SHAPE)
    with torch.no_grad():
        teacher_pred = teacher(probe).argmax(-1)
    assert len(teacher_pred.unique()) == 4 and float((teacher_pred == rule_labels(probe)).float().mean()) > 0.8

    def agreement() -> float:
        with torch.no_grad():
            return float((student.eval()(probe).argmax(-1) == teacher_pred).float().mean())

    before = agreement()
    distil_student(teacher, student, lambda n: torch.randn(n, *SHAPE), steps=200, batch_size=32, lr=1e-2,
                   temperature=2.0, hidden_weight=hidden_weight)
    assert not student.training
    assert agreement() > max(before + 0.3, 0.75)


def test_hidden_reuse_needs_statistics_pooling_networks() -> None:
    teacher = build_network("convnet", SHAPE, 3, width=8)
    student = build_network("statpool", SHAPE, 3, width=8, embed_dim=8)
    with pytest.raises(ValueError, match="statistics-pooling"):
        distil_student(teacher, student, lambda n: torch.randn(n, *SHAPE), steps=1, hidden_weight=1.0)
    distil_student(teacher, student, lambda n: torch.randn(n, *SHAPE), steps=1, hidden_weight=0.0)  # logits only: fine
