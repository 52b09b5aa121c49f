"""Classifier: several independent networks trained side by side."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from ddlight.data.synthetic import SyntheticSounds
from ddlight.tasks import Classifier


def test_forward_stacks_models() -> None:
    model = Classifier((1, 8, 12), 4, network_options={"width": 8}, num_models=3)
    out = model(torch.randn(5, 1, 8, 12))
    assert out.shape == (3, 5, 4)
    assert not torch.allclose(out[0], out[1])  # different initialisations


def test_summed_loss_gives_each_network_its_own_gradient() -> None:
    torch.manual_seed(0)
    model = Classifier((1, 8, 12), 4, network_options={"width": 8}, num_models=2, augment=False)
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


def test_independent_orders_train_each_network_on_its_own_chunk() -> None:
    torch.manual_seed(0)
    model = Classifier((1, 8, 12), 4, network_options={"width": 8}, num_models=2, augment=False)
    model.orders = 2  # what setup() sets with an AudioDataModule
    x, y = torch.randn(6, 1, 8, 12), torch.randint(0, 4, (6,))
    model._step((x, y), "train").backward()
    for k, (xs, ys) in enumerate(zip(x.chunk(2), y.chunk(2))):
        net = model.networks[k]
        ref = torch.autograd.grad(F.cross_entropy(net(xs), ys), list(net.parameters()))
        for got, want in zip((p.grad for p in net.parameters()), ref):
            torch.testing.assert_close(got, want)


def test_setup_gives_each_expert_its_own_batch_order() -> None:
    data = SyntheticSounds(train_per_class=3, val_per_class=1, test_per_class=1, duration=0.25, batch_size=4)
    model = Classifier(data.feature_shape, data.num_classes, network_options={"width": 4, "depth": 1}, num_models=3)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert model.orders == 3 and data.train_orders == 3
    sampler = data.train_dataloader().batch_sampler
    torch.manual_seed(1)
    batches = [torch.tensor(b) for b in sampler]  # indices of each step: 3 chunks of up to 4
    orders = [torch.cat([b.view(3, -1)[k] for b in batches]) for k in range(3)]
    assert all(sorted(o.tolist()) == list(range(len(data.splits["train"]))) for o in orders)
    assert not any(torch.equal(orders[i], orders[j]) for i, j in ((0, 1), (0, 2), (1, 2)))
    single = Classifier(data.feature_shape, data.num_classes, network_options={"width": 4, "depth": 1})
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
              limit_val_batches=0).fit(single, datamodule=data)
    assert data.train_orders == 1  # a reused DataModule does not keep the earlier model's orders


def test_training_batches_are_augmented_only_when_asked() -> None:
    x = torch.randn(8, 1, 8, 12)
    on = Classifier((1, 8, 12), 4, network_options={"width": 8}, augment=True)
    off = Classifier((1, 8, 12), 4, network_options={"width": 8}, augment=False)
    assert on.augment.config() is not None and off.augment.config() is None
    torch.manual_seed(0)
    assert not torch.equal(on.augment.train()(x), x)
    assert torch.equal(off.augment.train()(x), x)


def test_ddp_falls_back_to_one_order_per_rank_with_a_warning() -> None:
    data = SyntheticSounds(train_per_class=2, val_per_class=1, test_per_class=1, duration=0.25)
    model = Classifier(data.feature_shape, data.num_classes, network_options={"width": 4, "depth": 1}, num_models=2)
    model._trainer = SimpleNamespace(world_size=2, datamodule=data)  # what a DDP rank's trainer reports
    with pytest.warns(UserWarning, match="not supported under DDP"):
        model.setup("fit")
    assert model.orders == 1 and data.train_orders == 1
