"""evaluate: last-epoch accuracy of every repeat, deterministic per seed, one result per architecture."""

from __future__ import annotations

import pytest
import torch

from ddlight.evaluation import evaluate, num_classes_of
from ddlight.evaluation import protocol
from ddlight.recipe import TrainRecipe

TINY = {"width": 8, "depth": 1}
RECIPE = TrainRecipe(epochs=3, lr=0.01)


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


def test_reports_the_last_epoch_of_every_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accuracy is measured once per network, after training: never a best over test checkpoints."""
    calls = []
    real_accuracy = protocol.accuracy
    monkeypatch.setattr(protocol, "accuracy", lambda *a, **k: calls.append(1) or real_accuracy(*a, **k))
    (x, y), (tx, ty) = toy(4, 0), toy(4, 1)
    result = evaluate(x, y, tx, ty, RECIPE, repeats=2, network_options={"convnet": TINY})
    assert len(calls) == 2 and len(result["convnet"]["runs"]) == 2


def test_repeats_are_deterministic_per_seed_batched_or_not() -> None:
    (x, y), (tx, ty) = toy(3, 0), toy(10, 1)
    kwargs = {"architectures": ("convnet", "mlp"), "repeats": 3, "network_options": {"convnet": TINY}}
    first = evaluate(x, y, tx, ty, RECIPE, **kwargs)
    assert set(first) == {"convnet", "mlp"}
    for result in first.values():
        assert len(result["runs"]) == 3
        assert result["mean"] == pytest.approx(sum(result["runs"]) / 3, abs=1e-3)
        assert result["std"] >= 0
    assert evaluate(x, y, tx, ty, RECIPE, **kwargs) == first
    batched = evaluate(x, y, tx, ty, TrainRecipe(epochs=3, lr=0.01, batched=True), **kwargs)
    for arch in first:  # the same networks up to float rounding: the same accuracies but for a rare tie
        assert batched[arch]["runs"] == pytest.approx(first[arch]["runs"], abs=100 / 30 + 1e-6)
    assert evaluate(x, y, tx, ty, TrainRecipe(epochs=3, lr=0.01, seed=5), **kwargs) != first


def test_number_of_classes() -> None:
    assert num_classes_of(torch.tensor([0, 2]), torch.tensor([1, 4])) == 5
    assert num_classes_of(torch.full((2, 7), 1 / 7), torch.tensor([0, 1])) == 7
