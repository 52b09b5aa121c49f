"""Classifier: several independent networks trained side by side."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddlight.tasks import Classifier


def test_forward_stacks_models() -> None:
    model = Classifier((1, 8, 12), 4, network_options={"width": 8}, num_models=3)
    out = model(torch.randn(5, 1, 8, 12))
    assert out.shape == (3, 5, 4)
    assert not torch.allclose(out[0], out[1])  # different initialisations


def test_summed_loss_gives_each_network_its_own_gradient() -> None:
    torch.manual_seed(0)
    model = Classifier((1, 8, 12), 4, network_options={"width": 8}, num_models=2)
    x, y = torch.randn(6, 1, 8, 12), torch.randint(0, 4, (6,))
    model._step((x, y), "train").backward()
    alone = model.networks[1]
    ref = torch.autograd.grad(F.cross_entropy(alone(x), y), list(alone.parameters()))
    for got, want in zip((p.grad for p in alone.parameters()), ref):
        torch.testing.assert_close(got, want)


def test_learns_a_separable_problem() -> None:
    torch.manual_seed(0)
    model = Classifier((1, 4, 4), 2, network="mlp", lr=0.1, num_models=1)
    x = torch.randn(64, 1, 4, 4)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    opt = model.configure_optimizers()
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x)[0], y).backward()
        opt.step()
    assert (model(x)[0].argmax(-1) == y).float().mean() > 0.95
