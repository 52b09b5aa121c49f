"""DM: the mean-embedding loss, its siamese augmentation, the update, DDP ranks, CLI run."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from ddlight.cli import main
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers import DM
from ddlight.distillers.formation import decode, encode
from ddlight.distillers.dm import mean_embedding_distance
from ddlight.evaluation import herding
from ddlight.evaluation.suite import embedding_network
from ddlight.recipe import embed
from ddlight.io import load_synset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHAPE = (2, 8, 8)


class _Flatten(nn.Module):
    """A linear "network" whose embedding is the input itself."""

    def embed(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def tiny(**options: object) -> DM:
    """A DM of 3 classes, 2 per class, holding 5 real samples per class (every real batch is the whole class)."""
    torch.manual_seed(0)
    model = DM(SHAPE, 3, ipc=2, network_options={"width": 8}, batch_real=8, **options)
    generator = torch.Generator().manual_seed(1)
    model.hold_real_data(torch.randn(15, *SHAPE, generator=generator), torch.arange(15) % 3)
    return model


def tiny_sounds() -> SyntheticSounds:
    L.seed_everything(0)
    return SyntheticSounds(train_per_class=4, val_per_class=1, test_per_class=1, duration=0.25, batch_size=8)


def test_mean_embedding_distance_hand_computed() -> None:
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    assert mean_embedding_distance(real, torch.zeros(1, 2)).item() == pytest.approx(4.0 + 9.0)
    assert mean_embedding_distance(real, torch.tensor([[0.0, 3.0], [4.0, 3.0], [2.0, 3.0]])).item() == 0.0


def test_loss_is_zero_when_each_synthetic_sample_is_its_class_mean() -> None:
    model = tiny(siamese_augment=True)
    model.augment.p = 1.0  # every op applied: only one shared draw keeps the means equal
    features, by_class = model._real
    with torch.no_grad():
        for c, idx in enumerate(by_class):
            model.class_samples(c).copy_(features[idx].mean(0).expand(2, *SHAPE))
    assert model.matching_loss(_Flatten(), torch.Generator().manual_seed(0)).item() == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        model.class_samples(1)[0] += 1.0  # a synthetic sample off its class mean
    assert model.matching_loss(_Flatten(), torch.Generator().manual_seed(0)).item() > 0.1


def test_independent_draws_would_not_match_the_means() -> None:
    """The zero above needs the siamese draw: per-batch draws with different seeds move the means apart."""
    model = tiny(siamese_augment=True)
    model.augment.p = 1.0
    features, by_class = model._real
    with torch.no_grad():
        for c, idx in enumerate(by_class):
            model.class_samples(c).copy_(features[idx].mean(0).expand(2, *SHAPE))
    draws = iter(range(100))
    model.augment_pair = lambda real, syn, generator: (
        model.augment(real, torch.Generator().manual_seed(next(draws))),
        model.augment(syn, torch.Generator().manual_seed(next(draws))),
    )
    assert model.matching_loss(_Flatten(), torch.Generator().manual_seed(0)).item() > 0.1


@pytest.mark.parametrize("siamese", [False, True])
def test_a_small_step_along_the_gradient_lowers_the_loss(siamese: bool) -> None:
    model = tiny(siamese_augment=siamese)
    network = model.random_network(torch.Generator().manual_seed(0)).requires_grad_(False)
    before = model.matching_loss(network, torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad(before, model.synthetic)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        model.synthetic -= 1e-2 * grad / grad.norm()
    assert model.matching_loss(network, torch.Generator().manual_seed(3)) < before  # the same network and draws


class _Snapshots(Callback):
    """The set at the start of training and after every step."""

    def __init__(self) -> None:
        self.sets: list[Tensor] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: DM) -> None:
        self.sets.append(pl_module.synthetic.detach().clone())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: DM, *args: object) -> None:
        self.sets.append(pl_module.synthetic.detach().clone())


def trainer(steps: int, tmp_path: Path, callbacks: list[Callback] | None = None) -> L.Trainer:
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     accelerator="cpu", limit_val_batches=0, default_root_dir=str(tmp_path), callbacks=callbacks)


def test_herding_init_selects_in_the_stand_in_networks_embedding() -> None:
    """Without experts, init: herding picks each class's herding subset in the evaluation's stand-in ConvNet."""
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, *SHAPE, generator=generator), torch.arange(30) % 3
    model = DM(SHAPE, 3, ipc=2, init="herding", seed=5)
    model.initialize_from(x, y)
    expected = x[herding(embed(embedding_network(x, y, 3, seed=5), x), y, 2)]
    assert torch.equal(model.synthetic.detach(), expected)


def test_training_steps_update_the_set(tmp_path: Path) -> None:
    data = tiny_sounds()
    model = DM(data.feature_shape, data.num_classes, ipc=2, network_options={"width": 8})
    snapshots = _Snapshots()
    trainer(3, tmp_path, [snapshots]).fit(model, datamodule=data)
    assert model.global_step == 3 and len(snapshots.sets) == 4
    assert all(not torch.equal(a, b) for a, b in zip(snapshots.sets, snapshots.sets[1:]))
    assert torch.isfinite(model.synthetic).all()


def test_a_resumed_run_ends_with_the_uninterrupted_runs_set(tmp_path: Path) -> None:
    def model() -> DM:
        data = tiny_sounds()
        return DM(data.feature_shape, data.num_classes, ipc=2, network_options={"width": 8}, seed=3)

    straight = model()
    trainer(4, tmp_path).fit(straight, datamodule=tiny_sounds())
    first = model()
    interrupted = trainer(2, tmp_path)
    interrupted.fit(first, datamodule=tiny_sounds())
    interrupted.save_checkpoint(tmp_path / "half.ckpt")
    resumed = model()
    trainer(4, tmp_path).fit(resumed, datamodule=tiny_sounds(), ckpt_path=tmp_path / "half.ckpt")
    assert resumed.global_step == 4 and not torch.equal(resumed.synthetic, first.synthetic)
    torch.testing.assert_close(resumed.synthetic, straight.synthetic)


def _ddp_worker(rank: int, world_size: int, out: str, port: int) -> None:
    """One rank of a CPU/gloo DDP run; writes its set after 2 steps to ``out``.<rank>."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    data = tiny_sounds()
    model = DM(data.feature_shape, data.num_classes, ipc=1, network_options={"width": 8})
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", limit_val_batches=0, default_root_dir=str(Path(out).parent),
                        strategy="ddp" if world_size > 1 else "auto", devices=world_size)
    trainer.fit(model, datamodule=data)
    torch.save(model.synthetic.detach(), f"{out}.{rank}")


def _ddp_run(out: Path, world_size: int) -> list[Tensor]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(world_size, str(out), port), nprocs=world_size, start_method="spawn")
    return [torch.load(f"{out}.{rank}") for rank in range(world_size)]


@pytest.mark.timeout(180)
def test_ddp_ranks_average_their_gradients_into_one_set(tmp_path: Path) -> None:
    (single,) = _ddp_run(tmp_path / "one", world_size=1)
    first, second = _ddp_run(tmp_path / "two", world_size=2)
    assert torch.equal(first, second)  # one set on every rank
    assert not torch.equal(first, single)  # rank 1's own network and batches entered the average


def test_cli_fit_exports_a_loadable_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main([
        "fit", "--config", str(CONFIGS / "dm_synthetic.yaml"), "--trainer.max_steps=3",
        "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
        "--trainer.logger.init_args.save_dir=runs", "--data.init_args.train_per_class=4",
        "--data.init_args.val_per_class=1", "--data.init_args.test_per_class=1", "--data.init_args.duration=0.5",
        "--model.init_args.ipc=2", "--model.init_args.network_options={width: 8}",
        "--trainer.callbacks.init_args.repeats=1", "--trainer.callbacks.init_args.recipe.epochs=2",
    ])
    (manifest,) = tmp_path.glob("runs/**/distilled/manifest.json")
    synset = load_synset(manifest.parent)
    assert synset.manifest["method"] == "dm" and synset.manifest["step"] == 3
    assert synset.features.shape[0] == 2 * len(synset.manifest["classes"]) and torch.isfinite(synset.features).all()
    assert synset.manifest["network"] == "convnet" and synset.manifest["augment"] is not None
    assert "train/loss" in (manifest.parent.parent / "metrics.csv").read_text()
    report = json.loads((manifest.parent.parent / "evaluation.json").read_text())
    assert "random" in json.dumps(report)


def test_formation_starts_packed_and_matches_each_class_decoded() -> None:
    """formation 2: the set starts as 2 × ipc real picks per class packed in time (the base's start, shared by
    every distiller), and each class is matched through its decoded samples."""
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, *SHAPE, generator=generator), torch.arange(30) % 3
    model = DM(SHAPE, 3, ipc=1, formation=2, network_options={"width": 8})
    model.initialize_from(x, y, torch.Generator().manual_seed(0))
    expected = encode(model.real_start(x, y, 2, torch.Generator().manual_seed(0)), 2)
    assert torch.equal(model.synthetic.detach(), expected)
    for c in range(3):
        torch.testing.assert_close(model.class_samples(c), decode(model.synthetic[c : c + 1], 2))
    features, targets = model.exported_set()
    assert features.shape == (6, *SHAPE) and targets.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="formation factor must be between 1 and the 8 frames"):
        DM(SHAPE, 3, formation=9)
