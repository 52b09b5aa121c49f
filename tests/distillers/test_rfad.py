"""RFAD: kernel ridge regression, losses, learnable state, random networks, real batches, early stopping,
DDP gradients, CLI run."""

from __future__ import annotations

import json
import math
import socket
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from ddlight.cli import main
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers.base import average_across_ranks, load_synset, save_synset
from ddlight.distillers.formation import decode
from ddlight.distillers.rfad import (
    RFAD,
    Snapshot,
    StackedConvNets,
    kernel_ridge_solve,
    random_features,
    readout_kernel,
    sample_random_convnets,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHAPE = (2, 8, 8)


def tiny(**options: object) -> RFAD:
    """A small RFAD (3 classes, 2 per class, 2 narrow random networks) with a seeded set."""
    torch.manual_seed(0)
    return RFAD(SHAPE, 3, ipc=2, num_models=2, width=8, num_eval_models=2, **options)


def real_batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, *SHAPE, generator=generator), torch.arange(n) % 3


def test_kernel_ridge_matches_closed_form_of_linear_features() -> None:
    generator = torch.Generator().manual_seed(0)
    phi_s, phi_t = torch.randn(5, 7, generator=generator), torch.randn(4, 7, generator=generator)
    y_s = torch.randn(5, 3, generator=generator)
    k_ss = phi_s @ phi_s.T
    ridge = 0.1
    alpha = kernel_ridge_solve(k_ss, y_s, ridge)
    assert alpha.dtype == torch.float64
    lam = ridge * torch.trace(k_ss).double() / 5  # ridge scaled by the mean eigenvalue
    expected = phi_t.double() @ torch.linalg.inv(phi_s.double().T @ phi_s.double() + lam * torch.eye(7, dtype=torch.float64)) @ phi_s.double().T @ y_s.double()
    torch.testing.assert_close((phi_t.double() @ phi_s.double().T) @ alpha, expected)
    # scale invariance: the ridge follows the kernel's trace, so scaling K leaves predictions unchanged
    torch.testing.assert_close(kernel_ridge_solve(100 * k_ss, y_s, ridge) * 100, alpha)


def test_kernel_ridge_survives_a_singular_kernel() -> None:
    phi = torch.ones(4, 1)  # rank-one kernel, no ridge: Cholesky fails, the jitter fallback solves it
    alpha = kernel_ridge_solve(phi @ phi.T, torch.eye(4), ridge=0.0)
    assert torch.isfinite(alpha).all()


def test_defaults_are_the_originals() -> None:
    hp = RFAD(SHAPE, 3).hparams  # yolky/RFAD run_distillation.py / distillation.py
    assert hp.ridge == 5e-3 and hp.kernel_constant == 0.01 and hp.real_batch == 4 * 1280 and hp.patience == 25


@pytest.mark.parametrize("kernel_constant", [0.01, 0.0, 1.0])
def test_predictions_use_the_readout_kernel_with_its_constant_and_relative_ridge(kernel_constant: float) -> None:
    options = {} if kernel_constant == 0.01 else {"kernel_constant": kernel_constant}  # 0.01: the default
    model = tiny(**options)
    x, _ = real_batch()
    networks = model.random_networks(3)
    phi_s = random_features(model.synthetic, networks).double()
    phi_t = random_features(x, networks).double()
    torch.testing.assert_close(readout_kernel(phi_t, phi_s, kernel_constant) - 2 * phi_t @ phi_s.T,
                               torch.full((12, 6), kernel_constant, dtype=torch.float64))
    k_ss = 2 * phi_s @ phi_s.T + kernel_constant
    k_ts = 2 * phi_t @ phi_s.T + kernel_constant
    regularised = k_ss + 5e-3 * torch.trace(k_ss) / 6 * torch.eye(6, dtype=torch.float64)
    expected = k_ts @ torch.linalg.solve(regularised, model.regression_targets().double())
    torch.testing.assert_close(model.predict(x, networks).detach(), expected)


def test_real_batches_are_distinct_held_examples_drawn_from_a_seed() -> None:
    model = tiny(real_batch=5)
    with pytest.raises(RuntimeError, match="hold_real_data"):
        model.draw_real_batch(0)
    x = torch.arange(12.0).view(12, 1, 1, 1).expand(12, *SHAPE).contiguous()  # example i is filled with i
    y = torch.arange(12) % 3
    model.hold_real_data(x, y)
    features, labels = model.draw_real_batch(0)
    index = features[:, 0, 0, 0].long()
    assert features.shape == (5, *SHAPE) and len(index.unique()) == 5
    torch.testing.assert_close(labels, y[index])
    torch.testing.assert_close(model.draw_real_batch(0)[0], features)  # reproducible (and on resume)
    assert not torch.equal(model.draw_real_batch(1)[0], features)  # another seed (step, rank), another batch
    whole = tiny(real_batch=100)  # clipped to the held split
    whole.hold_real_data(x, y)
    assert sorted(whole.draw_real_batch(0)[0][:, 0, 0, 0].tolist()) == list(range(12))


def _fit(model: RFAD, data: SyntheticSounds, tmp_path: Path, **trainer_options: object) -> L.Trainer:
    """Fit ``model`` on ``data`` on the CPU without logger, checkpoints or sanity validation."""
    trainer = L.Trainer(check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                        default_root_dir=str(tmp_path), **trainer_options)
    trainer.fit(model, datamodule=data)
    return trainer


def _small_sounds(batch_size: int = 8) -> SyntheticSounds:
    """SyntheticSounds with 4 training clips per class (44 in all) and a spy on the splits it computes."""
    L.seed_everything(0)
    data = SyntheticSounds(train_per_class=4, val_per_class=2, test_per_class=2, duration=0.25, batch_size=batch_size)
    data.requested_splits = []
    split_features = data.split_features

    def spy(split: str, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        data.requested_splits.append(split)
        return split_features(split, *args, **kwargs)

    data.split_features = spy
    return data


@pytest.mark.parametrize(("real_batch", "expected"), [(20, 20), (1000, 44)])
def test_fit_draws_the_real_batch_independently_of_the_loader_batch(real_batch: int, expected: int,
                                                                     tmp_path: Path) -> None:
    data = _small_sounds(batch_size=8)
    model = RFAD(data.feature_shape, data.num_classes, ipc=1, num_models=1, width=8, num_eval_models=1,
                 real_batch=real_batch)
    sizes: list[int] = []
    regression_loss = model.regression_loss

    def record(features: torch.Tensor, labels: torch.Tensor, networks: list[nn.Module]) -> tuple[object, ...]:
        sizes.append(len(labels))
        return regression_loss(features, labels, networks)

    model.regression_loss = record
    _fit(model, data, tmp_path, max_steps=3, limit_val_batches=0)
    assert sizes == [expected] * 3  # not the loader's 8
    assert "test" not in data.requested_splits


def test_stops_after_patience_validation_checks_without_a_new_best(tmp_path: Path) -> None:
    data = _small_sounds()
    model = RFAD(data.feature_shape, data.num_classes, ipc=1, num_models=1, width=8, num_eval_models=2,
                 lr=0.5, patience=2)  # a large step size: the validation accuracy soon stops improving
    seen: list[float] = []
    record_validation = model.record_validation

    def record(accuracy: float) -> None:
        seen.append(accuracy)
        record_validation(accuracy)

    model.record_validation = record
    trainer = _fit(model, data, tmp_path, max_steps=40, val_check_interval=1)
    best = seen.index(max(seen))  # the first of equal maxima, as kept
    assert len(seen) < 40 and trainer.global_step == len(seen)  # stopped early, right after a check
    assert len(seen) - 1 - best == 2 and max(seen[best + 1:]) <= seen[best]
    assert model.best.accuracy == seen[best] and model.checks_since_best == 2
    assert "test" not in data.requested_splits  # early stopping never looks at the test split


def test_early_stopping_state_survives_a_checkpoint(tmp_path: Path) -> None:
    model = tiny()
    model.best = Snapshot(0.5, model.synthetic.detach().clone(), model.targets(), model.regression_targets(), 2.0)
    model.checks_since_best = 3
    checkpoint: dict[str, object] = {}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "state.ckpt")
    resumed = tiny()
    resumed.on_load_checkpoint(torch.load(tmp_path / "state.ckpt", weights_only=True))
    assert resumed.checks_since_best == 3 and resumed.best.accuracy == 0.5 and resumed.best.temperature == 2.0
    torch.testing.assert_close(resumed.best.features, model.best.features)
    resumed.on_load_checkpoint({})  # a checkpoint without RFAD state leaves it alone
    assert resumed.best is not None


def test_random_networks_differ_per_step_and_repeat_per_seed() -> None:
    model = tiny()
    x, _ = real_batch(4)
    first, again, other = (random_features(x, model.random_networks(s)) for s in (0, 0, 1))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    assert not any(p.requires_grad for net in model.random_networks(0) for p in net.parameters())
    model._prepare_eval(model.synthetic.detach(), model.regression_targets())  # fixed validation networks
    assert not torch.allclose(random_features(x, model._eval_networks), first)  # none of a step's
    # no normalisation layers, He-Gaussian conv weights
    (net,) = sample_random_convnets(SHAPE, 1, width=64, depth=2, seed=3)
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in net)
    conv = [m for m in net if isinstance(m, nn.Conv2d)][1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    # features are scaled by 1/sqrt(M*D)
    phi = random_features(x, model.random_networks(0))
    raw = torch.cat([n(x).flatten(1) for n in model.random_networks(0)], 1)
    torch.testing.assert_close(phi, raw / math.sqrt(raw.shape[1]))


def test_stacked_networks_give_the_same_loss_and_gradients() -> None:
    """stack_networks: one grouped-convolution pass equals the networks one by one (features, loss, gradients)."""
    x, y = real_batch()
    networks = sample_random_convnets(SHAPE, 3, width=4, depth=2, seed=5)
    stacked = StackedConvNets(networks)
    assert sum(isinstance(m, nn.Conv2d) and m.groups == 3 for m in stacked.modules()) == 2
    torch.testing.assert_close(random_features(x, stacked), random_features(x, networks), rtol=1e-5, atol=1e-6)
    results = {}
    for stack in (False, True):
        model = tiny(stack_networks=stack)
        assert isinstance(model.random_networks(0), StackedConvNets) == stack
        results[stack] = gradients(model, x, y, seed=4)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-7)
    for stacked_grad, loop_grad in zip(results[True][1], results[False][1]):
        assert loop_grad.abs().sum() > 0
        torch.testing.assert_close(stacked_grad, loop_grad, rtol=1e-4, atol=1e-6)


def gradients(model: RFAD, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The regression loss of ``(x, y)`` under the random networks of ``seed`` and its gradients."""
    loss, _ = model.regression_loss(x, y, model.random_networks(seed))
    return loss.detach(), list(torch.autograd.grad(loss, model.trained_tensors()))


def test_gradient_reaches_the_set_and_platt_temperature_is_learnable() -> None:
    model = tiny(loss="ce", lr_temperature=0.5)
    x, y = real_batch()
    loss, grads = gradients(model, x, y, 0)
    assert [p is q for p, q in zip(model.trained_tensors(), [model.synthetic, model.log_temperature])] == [True, True]
    assert grads[0].shape == model.synthetic.shape and grads[0].abs().sum() > 0
    assert grads[1].abs() > 0
    optimizer = model.configure_optimizers()
    before = model.synthetic.detach().clone()
    for step in range(4):  # a large temperature lr drives tau far; it stays positive
        _, grads = gradients(model, x, y, step)
        for p, g in zip(model.trained_tensors(), grads):
            p.grad = g
        optimizer.step()
    assert not torch.equal(before, model.synthetic)
    assert model.temperature.item() > 0 and model.temperature.item() != pytest.approx(1.0)
    assert loss.dtype == torch.float64


def test_mse_loss_regresses_centred_one_hot() -> None:
    model = tiny(loss="mse")
    assert all(p is not model.log_temperature for p in model.trained_tensors())
    preds = F.one_hot(torch.tensor([0, 2]), 3).double() - 1 / 3
    assert model.loss_fn(preds, torch.tensor([0, 2])).item() == 0.0
    assert model.loss_fn(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0, 2])).item() == pytest.approx(
        0.5 * (2 * (2 / 3) ** 2 + 4 * (1 / 3) ** 2) / 6
    )


def test_learnable_labels_start_centred_and_change() -> None:
    model = tiny(learn_labels=True, lr_labels=0.1)
    torch.testing.assert_close(model.regression_targets(), F.one_hot(model.labels, 3).float() - 1 / 3)
    optimizer = model.configure_optimizers()
    before = model.label_logits.detach().clone()
    x, y = real_batch()
    _, grads = gradients(model, x, y, 0)
    for p, g in zip(model.trained_tensors(), grads):
        p.grad = g
    optimizer.step()
    assert not torch.equal(before, model.label_logits)
    assert model.targets().shape == (6, 3)  # exported as soft labels


def _ddp_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    try:
        torch.set_num_threads(1)
        model = tiny(learn_labels=True)
        x, y = real_batch()
        shard = slice(rank * 6, (rank + 1) * 6)
        _, grads = gradients(model, x[shard], y[shard], 5)
        averaged = average_across_ranks(grads)  # every rank joins the all-reduce
        if rank == 0:
            torch.save(averaged, out)
    finally:
        dist.destroy_process_group()


def test_two_process_averaged_gradient_equals_union_batch_gradient(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "grads.pt"
    context = mp.start_processes(_ddp_worker, args=(port, str(out)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # False until every worker has exited
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("2-process gloo run did not finish within 120 s")
    model = tiny(learn_labels=True)
    x, y = real_batch()
    _, expected = gradients(model, x, y, 5)
    distributed = torch.load(out, weights_only=True)
    assert len(distributed) == len(expected) == 3
    for got, want in zip(distributed, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert average_across_ranks(expected)[0] is expected[0]  # single process: identity


def test_export_round_trip(tmp_path: Path) -> None:
    from ddlight.distillers.base import Synset

    model = tiny(learn_labels=True)
    extras = model.export_extras()["rfad"]
    assert extras["temperature"] == pytest.approx(1.0) and extras["num_models"] == 2 and extras["width"] == 8
    synset = Synset(model.synthetic.detach(), model.targets().detach(), torch.zeros(2, 8, 1), torch.ones(2, 8, 1),
                    {"feature_shape": list(SHAPE), "method": "rfad", **model.export_extras()})
    loaded = load_synset(save_synset(tmp_path, synset))
    torch.testing.assert_close(loaded.features, model.synthetic.detach())
    torch.testing.assert_close(loaded.targets, model.targets().detach())
    assert loaded.manifest["rfad"]["depth"] == 3


def test_cli_fit_writes_distilled_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main([
        "fit", "--config", str(CONFIGS / "rfad_synthetic.yaml"), "--trainer.max_steps=2",
        "--trainer.val_check_interval=1", "--trainer.log_every_n_steps=1","--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
        "--trainer.logger.init_args.save_dir=runs", "--data.init_args.train_per_class=8",
        "--data.init_args.val_per_class=2", "--data.init_args.test_per_class=2", "--data.init_args.duration=0.5",
        "--data.init_args.batch_size=16", "--model.init_args.ipc=2", "--model.init_args.width=8",
        "--model.init_args.num_models=2", "--model.init_args.num_eval_models=2",
        "--trainer.callbacks.init_args.repeats=1", "--trainer.callbacks.init_args.recipe.epochs=2",
    ])
    (manifest,) = tmp_path.glob("runs/**/distilled/manifest.json")
    synset = load_synset(manifest.parent)
    formation = synset.manifest["formation"]  # the config's multi-formation: the export holds the decoded set
    assert formation == 2 and synset.manifest["stored_ipc"] == 2
    assert synset.features.shape[0] == 2 * formation * len(synset.manifest["classes"])
    assert synset.manifest["method"] == "rfad" and synset.manifest["step"] == 2
    metrics = (manifest.parent.parent / "metrics.csv").read_text()
    assert "val/acc" in metrics and "train/temperature" in metrics
    report = json.loads((manifest.parent.parent / "evaluation.json").read_text())
    assert "random" in json.dumps(report)


@pytest.mark.parametrize("restore_best", [True, False])
def test_exports_the_best_validated_set(restore_best: bool, tmp_path: Path) -> None:
    L.seed_everything(0)
    data = SyntheticSounds(train_per_class=4, val_per_class=2, test_per_class=2, duration=0.25, batch_size=8)
    model = RFAD(data.feature_shape, data.num_classes, ipc=1, num_models=1, width=8, num_eval_models=2,
                 lr=0.5, restore_best=restore_best)  # a large step size: later sets are often worse
    seen: list[tuple[float, torch.Tensor]] = []
    keep = model.on_validation_epoch_end

    def record() -> None:
        keep()
        correct, count = model._val_counts.tolist()
        seen.append((correct / count, model.synthetic.detach().clone()))

    model.on_validation_epoch_end = record
    trainer = L.Trainer(max_steps=6, val_check_interval=1, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                        default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=data)
    assert len(seen) == 6
    best_accuracy, best_set = max(seen, key=lambda item: item[0])  # the first of equal maxima, as kept
    assert not torch.equal(best_set, model.synthetic.detach())  # the case under test: the last set is not the best
    features, _ = model.exported_set()
    if restore_best:
        assert model.best.accuracy == pytest.approx(best_accuracy)
        torch.testing.assert_close(features, best_set)
        assert model.export_extras()["rfad"]["best_val_acc"] == pytest.approx(100 * best_accuracy, abs=1e-3)
    else:
        torch.testing.assert_close(features, model.synthetic.detach())


def test_formation_regresses_on_the_decoded_set_and_exports_it() -> None:
    """formation 2: the kernel's support is the decoded set (12 rows from 6 stored) with each stored sample's
    regression target repeated; the loss reaches every stored sample; the best snapshot exports decoded."""
    model = tiny(formation=2, learn_labels=True)
    x, y = real_batch()
    networks = model.random_networks(3)
    support, y_s = model.support()
    torch.testing.assert_close(support, decode(model.synthetic, 2))
    torch.testing.assert_close(y_s, model.regression_targets().repeat_interleave(2, dim=0))
    phi_s = random_features(support, networks).double()
    phi_t = random_features(x, networks).double()
    k_ss = 2 * phi_s @ phi_s.T + 0.01
    regularised = k_ss + 5e-3 * torch.trace(k_ss) / 12 * torch.eye(12, dtype=torch.float64)
    expected = (2 * phi_t @ phi_s.T + 0.01) @ torch.linalg.solve(regularised, y_s.double())
    torch.testing.assert_close(model.predict(x, networks).detach(), expected.detach())
    model.loss_fn(model.predict(x, networks), y).backward()
    assert (model.synthetic.grad.flatten(1).abs().sum(1) > 0).all()
    model.record_validation(0.5)
    with torch.no_grad():
        model.synthetic.add_(1.0)  # the current set moves on; the export keeps the best one
    features, targets = model.exported_set()
    torch.testing.assert_close(features, decode(model.best.features, 2))
    torch.testing.assert_close(targets, model.best.targets.repeat_interleave(2, dim=0))
    assert features.shape == (12, *SHAPE)
