"""SAM: the two-pass update, one radius per parameter group, and experts trained with it."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddlight.callbacks import TrajectoryRecorder
from ddlight.data.synthetic import SyntheticSounds
from ddlight.io import load_json
from ddlight.tasks import Classifier
from ddlight.tasks.sam import SAM


def _loss(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(m(x), y) for m in models)


def _sam_by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, rho: float) -> list[torch.Tensor]:
    """w − lr ∇L(w + ρ g/‖g‖), g = ∇L(w), written out for one network."""
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for p, g in zip(shifted.parameters(), grads):
            p.add_(rho * g / norm)
    at_shift = torch.autograd.grad(F.cross_entropy(shifted(x), y), list(shifted.parameters()))
    return [(p - lr * g).detach() for p, g in zip(params, at_shift)]


def test_sam_step_is_the_gradient_at_the_ascended_point_and_each_group_has_its_own_radius() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    models = [nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)) for _ in range(2)]
    with torch.no_grad():
        models[1][0].weight.mul_(10)  # a much larger gradient norm in the second group
    expected = [_sam_by_hand(m, x, y, lr=0.1, rho=0.05) for m in models]
    optimizer = SAM([{"params": m.parameters()} for m in models], torch.optim.SGD, rho=0.05, lr=0.1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _loss(models, x, y)
        loss.backward()
        return loss

    before = _loss(models, x, y).detach()
    returned = optimizer.step(closure)
    torch.testing.assert_close(returned, before)  # the loss at w, not at the perturbed point
    for model, want in zip(models, expected):
        for got, ref in zip(model.parameters(), want):
            torch.testing.assert_close(got.detach(), ref)
    assert not optimizer.perturbed


def test_sam_keeps_the_base_optimisers_state_and_refuses_no_closure() -> None:
    model = nn.Linear(3, 2)
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.01, lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    state = optimizer.state_dict()
    assert state["state"] and "momentum_buffer" in state["state"][0] and state["param_groups"][0]["rho"] == 0.01
    fresh = SAM(nn.Linear(3, 2).parameters(), torch.optim.SGD, rho=0.01, lr=0.1, momentum=0.9)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.base.state[fresh.param_groups[0]["params"][0]]["momentum_buffer"],
                               state["state"][0]["momentum_buffer"])
    with pytest.raises(RuntimeError, match="closure"):
        optimizer.step()
    with pytest.raises(ValueError, match="rho"):
        SAM(model.parameters(), torch.optim.SGD, rho=0.0, lr=0.1)


def test_classifier_records_sam_experts_and_logs_each_batch_once(tmp_path) -> None:
    L.seed_everything(0)
    data = SyntheticSounds(train_per_class=2, val_per_class=1, test_per_class=1, duration=0.25, batch_size=8)
    model = Classifier(data.feature_shape, data.num_classes, network_options={"width": 8, "depth": 2},
                       num_models=2, sam_rho=0.01)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", limit_val_batches=0,
                        callbacks=[TrajectoryRecorder(dirpath=str(tmp_path))])
    start = [p.detach().clone() for p in model.parameters()]
    metric, calls = model.metrics["train_0"], []
    forward = metric.forward
    metric.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
    trainer.fit(model, datamodule=data)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(start, model.parameters()))
    manifest = load_json(tmp_path / "manifest.json")
    assert manifest["optimizer"]["name"] == "sam" and manifest["optimizer"]["rho"] == 0.01
    assert manifest["optimizer"]["lr"] == 0.01
    # the accuracy is measured once per batch, at the weights, not again at the perturbed point
    assert len(calls) == trainer.num_training_batches * trainer.max_epochs
    with pytest.raises(ValueError, match="sam_rho"):
        Classifier(data.feature_shape, data.num_classes, sam_rho=-1.0)
