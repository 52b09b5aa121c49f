"""MTT: the matching loss, the differentiable unroll, guards, expert checks, export, DDP and the CLI."""

from __future__ import annotations

import copy
import math
import os
import socket
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from ddlight.callbacks import TrajectoryRecorder
from ddlight.cli import main
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers.base import load_synset
from ddlight.distillers.formation import decode, encode
from ddlight.distillers.mtt import MTT, trajectory_loss
from ddlight.evaluation import herding
from ddlight.recipe import embed, final_expert_networks
from ddlight.io import load_json
from ddlight.tasks import Classifier

REPO = Path(__file__).resolve().parents[2]
DATA = {"train_per_class": 2, "val_per_class": 1, "test_per_class": 1, "duration": 0.25, "batch_size": 8}


def _data() -> SyntheticSounds:
    return SyntheticSounds(**DATA)


def _trainer(max_steps: int, **kwargs) -> L.Trainer:
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "accelerator": "cpu"}
    return L.Trainer(max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0, **(options | kwargs))


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny ConvNet experts (width 8), 3 epochs each, recorded on the tiny SyntheticSounds."""
    directory = tmp_path_factory.mktemp("experts")
    L.seed_everything(0)
    data = _data()
    model = Classifier(data.feature_shape, data.num_classes, network_options={"width": 8, "depth": 2}, num_models=2)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", callbacks=[TrajectoryRecorder(dirpath=str(directory))])
    trainer.fit(model, datamodule=data)
    return directory


def _mtt(expert_dir: Path, **kwargs) -> MTT:
    data = _data()
    options = {"ipc": 1, "syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1, "ema_decay": 0.9} | kwargs
    return MTT(data.feature_shape, data.num_classes, expert_dir=str(expert_dir), **options)


def test_trajectory_loss_hand_computed() -> None:
    student, start, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    # |(0, 2)|^2 / |(-1, 0)|^2 = 4 / 1
    assert trajectory_loss(student, start, target).item() == pytest.approx(4.0)
    assert trajectory_loss(target, start, target).item() == 0.0


def test_unroll_matches_manual_sgd_and_gives_gradients() -> None:
    torch.manual_seed(0)
    mtt = MTT((2, 4, 6), 3, ipc=2, syn_steps=2, augment=False, syn_lr_init=0.05)
    manifest = {"network": "convnet", "network_options": {"width": 4, "depth": 1}, "in_shape": [2, 4, 6], "num_classes": 3}
    mtt.build_student(manifest)
    net = copy.deepcopy(mtt.student).requires_grad_(True)
    start = torch.cat([p.detach().flatten() for p in net.parameters()])
    plan = mtt.plan(torch.Generator())

    final = mtt.unroll(start, plan)
    for _ in range(2):  # the same two steps by hand: plain SGD on the whole set
        loss = F.cross_entropy(net(mtt.synthetic.detach()), mtt.labels)
        grads = torch.autograd.grad(loss, list(net.parameters()))
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads):
                p -= 0.05 * g
    manual = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.testing.assert_close(final.detach(), manual, rtol=1e-5, atol=1e-6)

    target = start + torch.randn_like(start) * 0.1
    grad_x, grad_lr = torch.autograd.grad(trajectory_loss(final, start, target), [mtt.synthetic, mtt.syn_lr])
    assert torch.isfinite(grad_x).all() and grad_x.abs().sum() > 0
    assert torch.isfinite(grad_lr) and grad_lr != 0
    lr, eps, values = mtt.syn_lr.item(), 1e-3, []
    for value in (lr + eps, lr - eps):  # d loss / d syn_lr against a central finite difference
        mtt.syn_lr.data.fill_(value)
        values.append(trajectory_loss(mtt.unroll(start, plan), start, target).item())
    assert grad_lr.item() == pytest.approx((values[0] - values[1]) / (2 * eps), rel=2e-2)


def _meta_gradients(mtt: MTT, start: torch.Tensor, target: torch.Tensor, plan: list) -> list[torch.Tensor]:
    for tensor in mtt.trained_tensors():
        tensor.grad = None
    if mtt.hparams.unroll == "checkpointed":
        mtt.checkpointed_backward(start, target, plan)
    else:
        trajectory_loss(mtt.unroll(start, plan), start, target).backward()
    return [tensor.grad.clone() for tensor in mtt.trained_tensors()]


@pytest.mark.parametrize(("syn_steps", "segment", "formation"), [(5, 2, 1), (4, 4, 1), (3, 1, 1), (2, 8, 1), (3, 2, 2)])
def test_checkpointed_unroll_gives_the_full_unrolls_gradient(syn_steps: int, segment: int, formation: int) -> None:
    """Same set, labels, plan and augmentation draws: the two unrolls give one meta-gradient."""
    manifest = {"network": "convnet", "network_options": {"width": 4, "depth": 2}, "in_shape": [2, 8, 12], "num_classes": 3}
    grads = {}
    for unroll in ("full", "checkpointed"):
        torch.manual_seed(0)
        mtt = MTT((2, 8, 12), 3, ipc=3, syn_steps=syn_steps, batch_syn=4, learn_labels=True, syn_lr_init=0.05,
                  unroll=unroll, segment=segment, formation=formation)
        mtt.build_student(manifest)
        start = torch.randn(sum(p.numel() for p in mtt.student.parameters())) * 0.3
        target = start + 0.05 * torch.randn_like(start)
        grads[unroll] = _meta_gradients(mtt, start, target, mtt.plan(torch.Generator().manual_seed(1)))
    for full, checkpointed in zip(grads["full"], grads["checkpointed"]):
        assert full.abs().sum() > 0
        # exact up to the order in which floating-point contributions are summed
        torch.testing.assert_close(checkpointed, full, rtol=1e-5, atol=1e-7)


def test_checkpointed_unroll_replays_the_augmentation() -> None:
    """Without replaying each step's draw the recomputed segment would differ from the first pass."""
    manifest = {"network": "convnet", "network_options": {"width": 4, "depth": 1}, "in_shape": [1, 8, 12], "num_classes": 2}
    mtt = MTT((1, 8, 12), 2, ipc=2, syn_steps=3, unroll="checkpointed", segment=2)
    mtt.build_student(manifest)
    plan = mtt.plan(torch.Generator())
    start = torch.randn(sum(p.numel() for p in mtt.student.parameters()))
    final = mtt.unroll(start, plan).detach()
    other = [(idx, seed + 1) for idx, seed in plan]
    assert not torch.allclose(mtt.unroll(start, other).detach(), final)  # the draws matter...
    torch.testing.assert_close(mtt.unroll(start, plan).detach(), final, rtol=0, atol=0)  # ...and replay exactly


def test_fit_learns_and_export_round_trips(experts: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    mtt = _mtt(experts)
    trainer = _trainer(3, default_root_dir=tmp_path)
    trainer.fit(mtt, datamodule=_data())
    assert trainer.global_step == 3  # one global step per distillation update
    synset = load_synset(Path(trainer.log_dir) / "distilled")
    torch.testing.assert_close(synset.features, mtt.synthetic_ema)  # the EMA is what gets exported
    assert not torch.equal(mtt.synthetic_ema, mtt.synthetic.detach())
    assert synset.manifest["method"] == "mtt" and synset.manifest["syn_lr"] == pytest.approx(mtt.syn_lr.item())
    assert synset.manifest["expert_dir"] == str(experts) and synset.manifest["syn_steps"] == 2
    assert mtt.syn_lr.item() != 0.01  # learned, started at the experts' lr


@pytest.mark.parametrize("unroll", ["full", "checkpointed"])
def test_bf16_autocast_trains_an_fp32_set(experts: Path, tmp_path: Path, unroll: str) -> None:
    L.seed_everything(0)
    mtt = _mtt(experts, unroll=unroll, segment=1)
    start = mtt.synthetic.detach().clone()
    trainer = _trainer(2, default_root_dir=tmp_path, precision="bf16-mixed")
    trainer.fit(mtt, datamodule=_data())
    assert trainer.global_step == 2 and mtt.synthetic.dtype == torch.float32 and mtt.syn_lr.dtype == torch.float32
    assert torch.isfinite(mtt.synthetic).all() and not torch.equal(mtt.synthetic.detach(), start)
    assert load_synset(Path(trainer.log_dir) / "distilled").features.dtype == torch.float32


class _NaNOnce(MTT):
    """Injects a NaN loss into the calls listed in ``bad`` (counted from 0)."""

    bad: tuple[int, ...] = (1,)
    calls = 0

    def loss(self) -> torch.Tensor:
        loss = super().loss()
        self.calls += 1
        return loss * math.nan if self.calls - 1 in self.bad else loss


class _Snapshots(Callback):
    def __init__(self) -> None:
        self.sets: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.sets.append(pl_module.synthetic.detach().clone())


def test_nan_step_is_skipped(experts: Path) -> None:
    L.seed_everything(0)
    data = _data()
    mtt = _NaNOnce(data.feature_shape, data.num_classes, ipc=1, expert_dir=str(experts), syn_steps=2,
                   expert_epochs=1, max_start_epoch=1)
    snapshots = _Snapshots()
    with pytest.warns(UserWarning, match="_NaNOnce step 1: non-finite"):
        _trainer(3, callbacks=[snapshots]).fit(mtt, datamodule=data)
    assert len(snapshots.sets) == 4 and mtt.global_step == 3  # 4 batches, 3 updates
    assert torch.equal(snapshots.sets[0], snapshots.sets[1])  # the bad step left the set alone
    assert not torch.equal(snapshots.sets[1], snapshots.sets[2])
    assert torch.isfinite(mtt.synthetic).all()


def test_consecutive_nan_steps_stop(experts: Path) -> None:
    data = _data()
    mtt = _NaNOnce(data.feature_shape, data.num_classes, ipc=1, expert_dir=str(experts), syn_steps=1,
                   expert_epochs=1, max_bad_steps=2)
    mtt.bad = tuple(range(5))
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="2 consecutive non-finite steps"):
        _trainer(5).fit(mtt, datamodule=data)


def test_expert_label_init_averages_the_correct_experts_logits(experts: Path) -> None:
    """label_init: experts (DATM) starts each label at the mean logits of the final experts that get it right."""
    L.seed_everything(0)
    mtt = _mtt(experts, ipc=2, init="real", learn_labels=True, label_init="experts", label_scale=7.0, lr_label=0.0,
               lr_img=0.0)  # nothing moves: the labels and the set stay as initialised
    _trainer(1).fit(mtt, datamodule=_data())
    set_ = mtt.synthetic.detach()
    logits = torch.stack([network(set_) for network in final_expert_networks(experts)[1]]).detach()
    correct = logits.argmax(-1) == mtt.labels
    for i, label in enumerate(mtt.labels.tolist()):
        if correct[:, i].any():
            expected = logits[correct[:, i], i].mean(0)
        else:
            expected = 7.0 * F.one_hot(torch.tensor(label), mtt.num_classes).float()
        torch.testing.assert_close(mtt.label_logits.detach()[i], expected, rtol=1e-4, atol=1e-5)
    assert correct.any(0).sum() > 0  # the hand check exercised the experts' branch
    with pytest.raises(ValueError, match="learn_labels"):
        _mtt(experts, label_init="experts")
    with pytest.raises(ValueError, match="label_init"):
        _mtt(experts, learn_labels=True, label_init="teacher")


def test_herding_init_picks_the_evaluations_herding_subset(experts: Path) -> None:
    """init: herding starts from the subset the evaluation's herding baseline picks (first expert's embedding)."""
    data = SyntheticSounds(**(DATA | {"train_per_class": 6}))
    data.setup("fit")
    x, y = data.split_features("train")
    mtt = _mtt(experts, ipc=2, init="herding")
    mtt.initialize_from(x, y)
    network = final_expert_networks(experts)[1][0]
    expected = x[herding(embed(network, x), y, 2)]
    assert torch.equal(mtt.synthetic.detach(), expected)
    random = _mtt(experts, ipc=2)
    random.initialize_from(x, y, torch.Generator().manual_seed(0))
    assert not torch.equal(random.synthetic.detach(), expected)  # 2 of 6 per class: another start than random


def test_formation_trains_and_exports_the_decoded_set(experts: Path, tmp_path: Path) -> None:
    """formation 2: each stored sample starts as two herding picks packed in time, the student trains on the
    decoded set and the export holds ipc × 2 samples per class with their repeated labels."""
    data = SyntheticSounds(**(DATA | {"train_per_class": 6}))
    data.setup("fit")
    x, y = data.split_features("train")
    mtt = _mtt(experts, ipc=1, init="herding", formation=2, batch_syn=None, learn_labels=True, label_init="experts")
    mtt.initialize_from(x, y)
    picks = x[herding(embed(final_expert_networks(experts)[1][0], x), y, 2)]
    torch.testing.assert_close(mtt.synthetic.detach(), encode(picks, 2))
    plan = mtt.plan(torch.Generator().manual_seed(0))
    assert [sorted(idx.tolist()) for idx, _ in plan] == [list(range(2 * mtt.num_classes))] * 2  # decoded samples

    L.seed_everything(0)
    trainer = _trainer(2, default_root_dir=tmp_path)
    trainer.fit(mtt, datamodule=_data())
    assert mtt.label_logits.shape == (mtt.num_classes, mtt.num_classes)  # one label per stored sample
    synset = load_synset(Path(trainer.log_dir) / "distilled")
    torch.testing.assert_close(synset.features, decode(mtt.synthetic_ema, 2))
    torch.testing.assert_close(synset.targets, mtt.label_logits.softmax(-1).detach().repeat_interleave(2, 0))
    manifest = synset.manifest
    assert (manifest["ipc"], manifest["stored_ipc"], manifest["formation"]) == (2, 1, 2)
    with pytest.raises(ValueError, match="formation factor must be between 1 and the"):
        _mtt(experts, formation=10**6)


def test_unknown_init_is_refused(experts: Path) -> None:
    with pytest.raises(ValueError, match="init must be one of real, herding, noise, got 'kmeans'"):
        _mtt(experts, init="kmeans")


def test_syn_lr_guard() -> None:
    mtt = MTT((1, 4, 4), 2, ipc=1, min_syn_lr=1e-4, max_syn_lr=0.5)
    with torch.no_grad():
        mtt.syn_lr.fill_(-0.1)
    with pytest.warns(UserWarning, match="clamped"):
        mtt.guard_syn_lr()
    assert mtt.syn_lr.item() == pytest.approx(1e-4)
    with torch.no_grad():
        mtt.syn_lr.fill_(2.0)
    with pytest.raises(RuntimeError, match="syn_lr exploded.*lower lr_lr"):
        mtt.guard_syn_lr()


def test_incompatible_or_missing_experts(experts: Path, tmp_path: Path) -> None:
    mtt = _mtt(experts)
    manifest = load_json(experts / "manifest.json")
    data = _data()
    data.setup("fit")
    describe = data.describe()
    mtt.check_experts(manifest, describe)  # the experts' own data passes
    with pytest.raises(ValueError, match=r"fingerprint.*configs/expert_synthetic.yaml"):
        mtt.check_experts(manifest, describe | {"fingerprint": "0" * 16})
    other = SyntheticSounds(**(DATA | {"train_per_class": 3}))
    with pytest.raises(ValueError, match="do not match this data"):
        _trainer(1).fit(_mtt(experts), datamodule=other)
    with pytest.raises(FileNotFoundError, match="expert_<dataset>.yaml"):
        _trainer(1).fit(_mtt(tmp_path / "none"), datamodule=_data())


def test_experts_with_other_augmentation_are_refused(experts: Path) -> None:
    manifest = load_json(experts / "manifest.json")
    assert manifest["augment"] is not None and manifest["independent_orders"]  # recorded by the expert run
    data = _data()
    data.setup("fit")
    with pytest.raises(ValueError, match=r"augmentation.*allow_augment_mismatch"):
        _mtt(experts, augment=False).check_experts(manifest, data.describe())
    _mtt(experts, augment=False, allow_augment_mismatch=True).check_experts(manifest, data.describe())
    old = {k: v for k, v in manifest.items() if k != "augment"}  # experts recorded before augmentation
    with pytest.raises(ValueError, match="augmentation None"):
        _mtt(experts).check_experts(old, data.describe())


@pytest.mark.parametrize(("batch_syn", "sizes"), [(None, [6, 6, 6]), (256, [6, 6, 6]), (4, [4, 2, 4])])
def test_minibatches_never_repeat_a_sample_within_a_step(batch_syn: int | None, sizes: list[int]) -> None:
    mtt = MTT((1, 4, 4), 3, ipc=2, syn_steps=3, batch_syn=batch_syn)
    batches = mtt.minibatches(torch.Generator())
    assert [len(b) for b in batches] == sizes
    assert all(len(set(b.tolist())) == len(b) for b in batches)
    if batch_syn is None or batch_syn >= 6:  # the whole set once per step
        assert all(sorted(b.tolist()) == list(range(6)) for b in batches)
    else:  # a pass over the set, then the next: chunks never span two permutations
        assert sorted(torch.cat(batches[:2]).tolist()) == list(range(6))


def test_start_epochs_are_drawn_below_max_start_epoch(experts: Path) -> None:
    mtt = _mtt(experts, max_start_epoch=2, expert_epochs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*start epochs are drawn")  # [0, 2) fits: no clipping warning
        _trainer(1).fit(mtt, datamodule=_data())  # loads the 3-epoch experts: starts in [0, 2)
    generator = torch.Generator()
    starts = {mtt.sample_segment(generator)[2] for _ in range(40)}
    assert starts == {0, 1}


def test_start_epoch_window_begins_at_min_start_epoch(experts: Path, tmp_path: Path) -> None:
    """DATM's later window: starts in [1, 3) of the 3-epoch experts (4 snapshots), recorded in the manifest."""
    mtt = _mtt(experts, min_start_epoch=1, max_start_epoch=5, expert_epochs=1)
    with pytest.warns(UserWarning, match=r"start epochs are drawn from \[1, 3\), not up to max_start_epoch=5"):
        _trainer(1).fit(mtt, datamodule=_data())  # max_start clipped to 4 snapshots - 1 = 3
    generator = torch.Generator()
    assert {mtt.sample_segment(generator)[2] for _ in range(40)} == {1, 2}
    assert mtt.export_extras()["start_epochs"] == [1, 3]
    with pytest.raises(ValueError, match="need 0 <= min_start_epoch < max_start_epoch, got 3, 3"):
        _mtt(experts, min_start_epoch=3, max_start_epoch=3)
    with pytest.raises(ValueError, match="last start epoch is 2, below min_start_epoch=3; lower it or record longer"):
        _trainer(1).fit(_mtt(experts, min_start_epoch=3, max_start_epoch=5, expert_epochs=1), datamodule=_data())


class _RankCheck(Callback):
    """After every step, gather a checksum of each rank's set (and sampled start epoch) into a file."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        mine = torch.stack([pl_module.synthetic.detach().double().sum(), pl_module.synthetic.detach().double().norm()])
        gathered = trainer.strategy.all_gather(mine)
        if trainer.is_global_zero:
            with open(self.out, "a") as f:
                f.write(" ".join(f"{v:.17g}" for v in gathered.flatten().tolist()) + "\n")


def _ddp_worker(rank: int, world_size: int, experts: str, out: str, port: int, unroll: str) -> None:
    """One rank of a CPU/gloo DDP run (the environment variables make Lightning join, not launch)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    L.seed_everything(0)
    strategy = "ddp" if world_size > 1 else "auto"
    trainer = _trainer(3, strategy=strategy, devices=world_size, callbacks=[_RankCheck(out)],
                       default_root_dir=str(Path(out).parent))
    trainer.fit(_mtt(Path(experts), unroll=unroll, segment=1), datamodule=_data())


def _ddp_run(experts: Path, out: Path, world_size: int, unroll: str) -> list[list[float]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(world_size, str(experts), str(out), port, unroll), nprocs=world_size,
                       start_method="spawn")
    return [[float(v) for v in line.split()] for line in out.read_text().splitlines()]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("unroll", ["full", "checkpointed"])
def test_ddp_two_processes_keep_one_set(experts: Path, tmp_path: Path, unroll: str) -> None:
    single = _ddp_run(experts, tmp_path / "one.txt", world_size=1, unroll=unroll)
    double = _ddp_run(experts, tmp_path / "two.txt", world_size=2, unroll=unroll)
    assert len(single) == len(double) == 3
    for row in double:  # rank 0 and rank 1 hold the same set after every step
        assert row[:2] == row[2:]
    assert double[0] != double[-1]  # and it was updated
    assert single[0][:2] != double[0][:2]  # rank 1's different expert / start epoch changed the average


def test_cli_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = ["--data.init_args.train_per_class=2", "--data.init_args.val_per_class=1",
            "--data.init_args.test_per_class=1", "--data.init_args.duration=0.25"]
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]
    main(["fit", "--config", str(REPO / "configs/expert_synthetic.yaml"), *data, *quiet, "--trainer.max_epochs=3",
          "--model.init_args.num_models=1", "--model.init_args.network_options.width=8", "--test_after_fit=false"])
    assert (tmp_path / "experts/synthetic/manifest.json").is_file()
    main(["fit", "--config", str(REPO / "configs/mtt_synthetic.yaml"), *data, "--trainer.max_steps=2",
          "--model.init_args.ipc=1", "--model.init_args.syn_steps=2", "--model.init_args.min_start_epoch=0",
          "--model.init_args.max_start_epoch=1",
          "--model.init_args.expert_epochs=1", "--trainer.enable_progress_bar=false",
          "--trainer.callbacks.init_args.recipe.epochs=2", "--trainer.callbacks.init_args.repeats=1",
          "--trainer.callbacks.init_args.baselines=[random]"])
    run = next((tmp_path / "runs/mtt_synthetic").rglob("distilled")).parent
    synset = load_synset(run / "distilled")
    assert synset.manifest["method"] == "mtt" and synset.manifest["step"] == 2
    assert synset.manifest["formation"] == 2  # the config packs 2 decoded samples into each stored one
    assert len(synset.features) == synset.manifest["num_classes"] * 2
    report = load_json(run / "evaluation.json")
    assert report  # the evaluator ran on the distilled set
