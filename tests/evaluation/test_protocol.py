"""train_and_test / evaluate: learn a separable toy problem, last epoch, deterministic repeats."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddlight.augment import SpecAugment
from ddlight.evaluation import evaluate, train_and_test
from ddlight.evaluation import protocol

TINY = {"width": 8, "depth": 1}


def toy(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes, each a bright frequency band in noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(per_class)
    x = 0.5 * torch.randn(len(y), 1, 8, 8, generator=g)
    x[torch.arange(len(y)), 0, 2 * y, :] += 2.0
    return x, y


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_learns_separable_problem_with_hard_and_soft_targets() -> None:
    (x, y), (tx, ty) = toy(10, 0), toy(20, 1)
    assert train_and_test(x, y, tx, ty, network_options=TINY, epochs=20, augment=SpecAugment()) > 90
    soft = 0.8 * F.one_hot(y, 3) + 0.2 / 3
    assert train_and_test(x, soft, tx, ty, network_options=TINY, epochs=20) > 90


def test_reports_the_last_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accuracy is measured once, after training: never a best over test checkpoints."""
    calls = []
    real_accuracy = protocol.accuracy
    monkeypatch.setattr(protocol, "accuracy", lambda *a, **k: calls.append(1) or real_accuracy(*a, **k))
    (x, y), (tx, ty) = toy(4, 0), toy(4, 1)
    result = train_and_test(x, y, tx, ty, network_options=TINY, epochs=6)
    assert len(calls) == 1 and 0 <= result <= 100


def test_evaluate_repeats_are_deterministic_per_seed() -> None:
    (x, y), (tx, ty) = toy(3, 0), toy(10, 1)
    kwargs = {"architectures": ("convnet", "mlp"), "repeats": 3, "epochs": 3, "network_options": {"convnet": TINY}}
    first = evaluate(x, y, tx, ty, **kwargs)
    assert set(first) == {"convnet", "mlp"}
    for arch, result in first.items():
        assert len(result["runs"]) == 3
        assert result["mean"] == pytest.approx(sum(result["runs"]) / 3, abs=1e-3)
        assert result["std"] >= 0
    assert evaluate(x, y, tx, ty, **kwargs) == first
    assert evaluate(x, y, tx, ty, seed=5, **kwargs) != first


def test_rejects_mismatched_targets() -> None:
    x, y = toy(2, 0)
    with pytest.raises(ValueError, match="targets"):
        train_and_test(x, y[:-1], x, y, network_options=TINY, epochs=1)
