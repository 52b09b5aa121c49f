"""The Distiller contract, checked alike for every distiller ddlight ships (found as subclasses of the base).

Each one, at tiny size: fits without reading a training batch and exports a set that loads back; skips a
non-finite update and leaves the set alone; resumes from a checkpoint to the very state of an uninterrupted
run; keeps one set on both ranks of a 2-process DDP run on the CPU (gloo).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback

from ddlight.callbacks import TrajectoryRecorder
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers import DC, DM, FRAMI, MTT, RFAD, Distiller
from ddlight.io import load_synset
from ddlight.networks import build_network
from ddlight.networks.export import save_network
from ddlight.tasks import Classifier

#: A tiny distiller of each shipped class on :func:`tiny_sounds`; ``paths`` holds ``experts`` and ``teacher``.
CASES: dict[str, Callable[[SyntheticSounds, dict[str, str]], Distiller]] = {
    "MTT": lambda data, paths: MTT(  # the checkpointed unroll: a loss hook that fills the gradients itself
        data.feature_shape, data.num_classes, ipc=1, expert_dir=paths["experts"], syn_steps=2, expert_epochs=1,
        max_start_epoch=1, learn_labels=True, ema_decay=0.9, unroll="checkpointed", segment=1),
    "RFAD": lambda data, paths: RFAD(
        data.feature_shape, data.num_classes, ipc=1, num_models=1, width=8, num_eval_models=1, real_batch=16,
        learn_labels=True, patience=None),
    "DC": lambda data, paths: DC(  # two set updates per step: one through update(last=False), one by the base
        data.feature_shape, data.num_classes, ipc=1, network_options={"width": 8}, batch_real=2, outer_loop=2,
        inner_loop=1, siamese_augment=True),
    "DM": lambda data, paths: DM(
        data.feature_shape, data.num_classes, ipc=1, network_options={"width": 8}, batch_real=2),
    "FRAMI": lambda data, paths: FRAMI(
        data.feature_shape, data.num_classes, paths["teacher"], ipc=1, batch_size=8,
        student_options={"width": 8, "embed_dim": 8}),
}


def shipped_distillers() -> set[type[Distiller]]:
    """Every concrete subclass of :class:`Distiller` defined in ddlight."""
    found, todo = set(), [Distiller]
    while todo:
        for cls in todo.pop().__subclasses__():
            todo.append(cls)
            if cls.__module__.startswith("ddlight.") and not inspect.isabstract(cls):
                found.add(cls)
    return found


def tiny_sounds() -> SyntheticSounds:
    """SyntheticSounds of 22 training clips (3 loader batches per epoch), seeded."""
    L.seed_everything(0)
    return SyntheticSounds(train_per_class=2, val_per_class=1, test_per_class=1, duration=0.25, batch_size=8)


def trainer(steps: int, root: Path, **options: object) -> L.Trainer:
    settings = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "accelerator": "cpu",
                "limit_val_batches": 0, "num_sanity_val_steps": 0, "default_root_dir": str(root)}
    return L.Trainer(max_steps=steps, **(settings | options))


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny MTT experts (2 ConvNets of width 8, 3 epochs) and an untrained FRAMI teacher, on :func:`tiny_sounds`."""
    directory = tmp_path_factory.mktemp("contract")
    data = tiny_sounds()
    model = Classifier(data.feature_shape, data.num_classes, network_options={"width": 8, "depth": 2}, num_models=2)
    recorder = TrajectoryRecorder(dirpath=str(directory / "experts"))
    L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
              callbacks=[recorder]).fit(model, datamodule=data)
    options = {"width": 8, "embed_dim": 8}
    teacher = build_network("statpool", data.feature_shape, data.num_classes, **options).eval()
    extras = {"feature_mean": data.features.mean, "feature_std": data.features.std}
    save_network(directory / "teacher.safetensors", teacher, "statpool", options, {"data": data.describe()}, extras)
    return {"experts": str(directory / "experts"), "teacher": str(directory / "teacher.safetensors")}


class _Sets(Callback):
    """The set at the start of training and after every training step."""

    def __init__(self) -> None:
        self.sets: list[torch.Tensor] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: Distiller) -> None:
        self.sets.append(pl_module.synthetic.detach().clone())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Distiller, *args: object) -> None:
        self.sets.append(pl_module.synthetic.detach().clone())


def test_every_shipped_distiller_has_a_case() -> None:
    assert {cls.__name__ for cls in shipped_distillers()} == set(CASES)


def test_step_seeds_differ_by_purpose_step_rank_and_retry() -> None:
    model = DM((1, 4, 4), 2, ipc=1, network_options={"width": 4}, seed=0)
    model.trainer = SimpleNamespace(global_step=3, global_rank=1)
    seed = model.step_seed("draws")
    assert seed == model.step_seed("draws") and seed != model.step_seed("other draws")
    assert model.step_seed("draws", shared=True) != seed
    model.trainer = SimpleNamespace(global_step=3, global_rank=0)
    assert model.step_seed("draws") != seed  # another rank
    assert model.step_seed("draws", shared=True) == model.step_seed("draws", shared=True)
    shared = model.step_seed("draws", shared=True)
    model.trainer = SimpleNamespace(global_step=3, global_rank=1)
    assert model.step_seed("draws", shared=True) == shared  # the same on every rank
    model.trainer = SimpleNamespace(global_step=4, global_rank=1)
    assert model.step_seed("draws") != seed  # another step
    model.trainer, model.bad_steps = SimpleNamespace(global_step=3, global_rank=1), 1
    assert model.step_seed("draws") != seed  # a retry after a skipped update draws anew


@pytest.mark.parametrize("name", list(CASES))
def test_fit_reads_no_training_batch_and_exports_a_set_that_loads_back(
    name: str, paths: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_sounds()
    transfers, splits = [], []
    transfer, split_features = data.on_after_batch_transfer, data.split_features
    monkeypatch.setattr(data, "on_after_batch_transfer", lambda *a: transfers.append(1) or transfer(*a))
    monkeypatch.setattr(data, "split_features", lambda split, **kw: splits.append(split) or split_features(split, **kw))
    model = CASES[name](data, paths)
    sets = _Sets()
    trainer(2, tmp_path, callbacks=[sets]).fit(model, datamodule=data)
    assert model.global_step == 2 and not torch.equal(sets.sets[0], sets.sets[-1])
    assert transfers == []  # the clock reads no batch: no waveform batch became features
    assert splits == (["train"] if model.needs_real_data or model.init != "noise" else [])  # declared, once
    synset = load_synset(tmp_path / "distilled")
    expected = model.to_synset()
    torch.testing.assert_close(synset.features, expected.features.cpu(), rtol=0, atol=0)
    torch.testing.assert_close(synset.targets, expected.targets.cpu(), rtol=0, atol=0)
    assert synset.manifest == json.loads(json.dumps(expected.manifest)) | {"partial": False}
    assert synset.manifest["step"] == 2 and synset.manifest["ipc"] == 1 and synset.features.shape[1:] == data.feature_shape


@pytest.mark.parametrize("name", list(CASES))
def test_a_non_finite_update_is_skipped_and_leaves_the_set_alone(
    name: str, paths: dict[str, str], tmp_path: Path
) -> None:
    data = tiny_sounds()
    model = CASES[name](data, paths)
    calls: list[bool] = []
    update = model.update

    def poisoned(loss: torch.Tensor, last: bool = True) -> torch.Tensor:
        calls.append(last)
        return update(loss * math.nan if len(calls) == 1 else loss, last)

    model.update = poisoned
    sets = _Sets()
    with pytest.warns(UserWarning, match=f"{name} step 0: non-finite loss or gradient, update skipped"):
        trainer(2, tmp_path, callbacks=[sets]).fit(model, datamodule=data)
    assert model.global_step == 2 and model.bad_steps == 0 and len(sets.sets) == 4  # 3 steps, 2 updates
    assert torch.equal(sets.sets[0], sets.sets[1])  # the skipped step left the set alone
    assert not torch.equal(sets.sets[1], sets.sets[3]) and torch.isfinite(model.synthetic).all()


@pytest.mark.parametrize("name", list(CASES))
def test_a_resumed_run_ends_in_the_uninterrupted_runs_state(name: str, paths: dict[str, str], tmp_path: Path) -> None:
    straight = CASES[name](tiny_sounds(), paths)
    trainer(4, tmp_path).fit(straight, datamodule=tiny_sounds())
    first = CASES[name](tiny_sounds(), paths)
    interrupted = trainer(2, tmp_path)
    interrupted.fit(first, datamodule=tiny_sounds())
    interrupted.save_checkpoint(tmp_path / "half.ckpt")
    resumed = CASES[name](tiny_sounds(), paths)
    trainer(4, tmp_path).fit(resumed, datamodule=tiny_sounds(), ckpt_path=tmp_path / "half.ckpt")
    assert resumed.global_step == 4 and not torch.equal(resumed.synthetic, first.synthetic)
    state, other = straight.state_dict(), resumed.state_dict()
    assert state.keys() == other.keys()
    for key in state:  # the set, labels, step size, moving average, generator, ...: bitwise equal on the CPU
        assert torch.equal(state[key], other[key]), key


# ------------------------------------------------------------------------------------------------ DDP
class _FirstAndLast(Callback):
    """Writes the set at the start of training (after the broadcast) and at its end to ``<out>.<rank>``."""

    def __init__(self, out: str) -> None:
        self.out, self.start = out, None

    def on_train_start(self, trainer: L.Trainer, pl_module: Distiller) -> None:
        self.start = pl_module.synthetic.detach().clone()

    def on_train_end(self, trainer: L.Trainer, pl_module: Distiller) -> None:
        torch.save({"start": self.start, "end": pl_module.synthetic.detach().clone()}, f"{self.out}.{trainer.global_rank}")


def _ddp_worker(rank: int, port: int, paths: dict[str, str], out: str) -> None:
    """One rank of 2-process CPU/gloo DDP runs of every case, one after the other in one process group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    for name, build in CASES.items():
        data = tiny_sounds()
        callback = _FirstAndLast(f"{out}/{name}")
        trainer(2, Path(out) / name, strategy="ddp", devices=2, callbacks=[callback]).fit(build(data, paths), datamodule=data)


@pytest.fixture(scope="module")
def ddp_sets(paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the sets each rank held at the start and end of each case's 2-process DDP run."""
    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, paths, str(out)), nprocs=2, start_method="spawn")
    return out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(CASES))
def test_two_ddp_ranks_keep_one_set(name: str, ddp_sets: Path) -> None:
    first, second = (torch.load(ddp_sets / f"{name}.{rank}", weights_only=True) for rank in (0, 1))
    assert torch.equal(first["start"], second["start"])  # rank 0's initial set, broadcast
    assert torch.equal(first["end"], second["end"])  # averaged gradients: one set on both ranks
    assert not torch.equal(first["start"], first["end"])
