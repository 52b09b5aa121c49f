"""FRAMI: the inversion losses, the data-free training loop, teacher checks, export and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from ddlight.callbacks import StudentEvaluator
from ddlight.cli import main
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers import DM, FRAMI
from ddlight.features import FeatureConfig
from ddlight.distillers.frami.losses import batchnorm_statistics_loss, contrastive_loss
from ddlight.networks.generator import FeatureGenerator
from ddlight.io import load_synset
from ddlight.networks import build_network
from ddlight.networks.export import save_network
from ddlight.reconstruct import main as reconstruct

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: Tiny SyntheticSounds arguments: the same in the teacher fixture and in the CLI runs.
DATA = {"train_per_class": 4, "val_per_class": 1, "test_per_class": 2, "duration": 0.5, "batch_size": 16}
CLI_DATA = [f"--data.init_args.{k}={v}" for k, v in DATA.items()]
#: The front end of configs/data/synthetic.yaml, which the CLI runs use.
FEATURES = FeatureConfig(name="fdmfcc", n_fft=1024, hop_length=512, n_mels=40, n_mfcc=20)


@pytest.fixture
def data() -> SyntheticSounds:
    dm = SyntheticSounds(**DATA, features=FEATURES)
    dm.setup("fit")
    return dm


def write_teacher(path: Path, dm: SyntheticSounds, network: str = "statpool", **extras: torch.Tensor) -> Path:
    """A small teacher trained briefly on the tiny training split, exported as NetworkExport does."""
    torch.manual_seed(0)
    options = {"width": 16, "embed_dim": 16} if network == "statpool" else {"width": 8, "norm": "batch"}
    net = build_network(network, dm.feature_shape, dm.num_classes, **options).train()
    x, y = dm.split_features("train")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    extras = {"feature_mean": dm.features.mean, "feature_std": dm.features.std, **extras}
    return save_network(path, net.eval(), network, options, {"data": dm.describe()}, extras)


def frami(teacher: Path, dm: SyntheticSounds, **kwargs: object) -> FRAMI:
    options = {"ipc": 2, "batch_size": 8, "student_options": {"width": 8, "embed_dim": 8}, "student_steps": 3,
               **kwargs}
    return FRAMI(dm.feature_shape, dm.num_classes, str(teacher), **options)


def losses_of_a_batch(model: FRAMI, seed: int = 0) -> dict[str, torch.Tensor]:
    """The inversion losses of a batch drawn (rows or latents, views) from ``seed``."""
    x, labels = model.inversion_batch(torch.Generator().manual_seed(seed))
    return model.inversion_losses(x, labels, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- losses
def test_contrastive_loss_matches_the_formula_on_orthogonal_views() -> None:
    a = torch.eye(3, 4)  # three orthogonal embeddings; each view's partner is itself
    loss = contrastive_loss(a, a.clone(), temperature=0.1)
    expected = -math.log(math.exp(10) / (math.exp(10) + 4))  # partner at cos 1, four others at cos 0
    assert float(loss) == pytest.approx(expected, rel=1e-3)
    swapped = contrastive_loss(a, a[[1, 2, 0]], temperature=0.1)
    assert float(swapped) > 5.0  # partners orthogonal, a non-partner identical: a large loss


def test_contrastive_loss_with_same_class_negatives_only() -> None:
    a = torch.eye(3, 4)
    loss = contrastive_loss(a, a.clone(), temperature=0.1, labels=torch.tensor([0, 0, 1]))
    # the four views of class 0 each see their partner and two other class-0 views; class 1's two views
    # see only each other (loss 0)
    expected = 4 / 6 * -math.log(math.exp(10) / (math.exp(10) + 2))
    assert float(loss) == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_batchnorm_statistics_term_is_distance_to_running_statistics() -> None:
    bn = nn.BatchNorm1d(2).eval()
    bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
    bn.running_var.copy_(torch.tensor([4.0, 1.0]))
    x = torch.tensor([[0.0, -1.0], [2.0, -1.0]])  # batch means (1, -1), variances (1, 0)
    with batchnorm_statistics_loss(nn.Sequential(bn)) as terms:
        bn(x)
    assert len(terms) == 1
    assert float(terms[0]) == pytest.approx(0.0 + math.sqrt(3.0**2 + 1.0**2))
    bn(x)  # outside the block the hook is gone
    assert len(terms) == 1
    with pytest.raises(ValueError, match="no batch-norm"):
        batchnorm_statistics_loss(nn.Linear(2, 2)).__enter__()


def test_generator_outputs_normalised_features_of_any_shape() -> None:
    gen = FeatureGenerator((3, 10, 17), num_classes=4, latent_dim=8, width=8)
    out = gen(torch.randn(6, 8), torch.arange(6) % 4)
    assert out.shape == (6, 3, 10, 17)
    assert abs(float(out.mean())) < 0.2


# ------------------------------------------------------------------------------------ the module
def test_inversion_makes_the_teacher_recognise_the_set(tmp_path: Path, data: SyntheticSounds) -> None:
    teacher = write_teacher(tmp_path / "t.safetensors", data)
    model = frami(teacher, data, ipc=4, batch_size=44, lr=0.1)
    optimizer = model.configure_optimizers()
    torch.manual_seed(0)
    first = model.inversion_losses(model.synthetic, model.labels, torch.Generator().manual_seed(0))
    for step in range(80):
        losses = losses_of_a_batch(model, step)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
    last = model.inversion_losses(model.synthetic, model.labels, torch.Generator().manual_seed(0))
    assert set(first) == {"ce", "bn", "contrastive", "total", "teacher_acc"}
    assert float(last["ce"]) < 0.75 * float(first["ce"])
    assert float(last["bn"]) < float(first["bn"])
    assert float(last["teacher_acc"]) > float(first["teacher_acc"])
    assert all(p.grad is None for p in model.teacher.parameters())  # the teacher is never trained


def test_ablation_switches_remove_their_terms(tmp_path: Path, data: SyntheticSounds) -> None:
    teacher = write_teacher(tmp_path / "t.safetensors", data)
    model = frami(teacher, data, contrastive=False, bn_weight=0.0)
    losses = losses_of_a_batch(model)
    assert float(losses["contrastive"]) == 0.0 and float(losses["bn"]) == 0.0
    torch.testing.assert_close(losses["total"], losses["ce"])


def test_teacher_stays_in_eval_mode(tmp_path: Path, data: SyntheticSounds) -> None:
    model = frami(write_teacher(tmp_path / "t.safetensors", data), data)
    model.train()
    assert model.training and not model.teacher.training


def test_teacher_problems_have_clear_errors(tmp_path: Path, data: SyntheticSounds) -> None:
    with pytest.raises(FileNotFoundError, match="configs/model/teacher.yaml"):
        frami(tmp_path / "missing.safetensors", data)
    convnet = write_teacher(tmp_path / "convnet.safetensors", data, network="convnet")
    with pytest.raises(ValueError, match="statistics-pooling"):
        frami(convnet, data, reuse_hidden=True)
    frami(convnet, data, reuse_hidden=False)  # a batch-norm ConvNet teacher works without hidden-state reuse
    teacher = write_teacher(tmp_path / "t.safetensors", data)
    with pytest.raises(ValueError, match="same\\s+data and feature configuration"):
        FRAMI((3, 20, 99), data.num_classes, str(teacher))
    (tmp_path / "folder").mkdir()
    write_teacher(tmp_path / "folder" / "network_000.safetensors", data)
    assert frami(tmp_path / "folder", data).teacher_header["network"] == "statpool"


def test_refuses_data_normalised_unlike_the_teachers(tmp_path: Path, data: SyntheticSounds) -> None:
    teacher = write_teacher(tmp_path / "t.safetensors", data, feature_mean=data.features.mean + 1.0)
    model = frami(teacher, data)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", limit_val_batches=0)
    with pytest.raises(ValueError, match="normalises features differently"):
        trainer.fit(model, datamodule=SyntheticSounds(**DATA, features=FEATURES))


def test_real_training_batches_never_reach_a_loss(tmp_path: Path, data: SyntheticSounds,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace every real training batch by NaNs: the set, the losses and the students stay finite."""
    teacher = write_teacher(tmp_path / "t.safetensors", data)
    original = SyntheticSounds.on_after_batch_transfer

    def poisoned(self: SyntheticSounds, batch: tuple, dataloader_idx: int) -> tuple:
        x, y = original(self, batch, dataloader_idx)
        return (torch.full_like(x, math.nan), y) if self.trainer.training else (x, y)

    monkeypatch.setattr(SyntheticSounds, "on_after_batch_transfer", poisoned)
    model = frami(teacher, data)
    start = model.synthetic.detach().clone()
    students = StudentEvaluator(repeats=1)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", limit_val_batches=0, default_root_dir=str(tmp_path), callbacks=[students])
    trainer.fit(model, datamodule=SyntheticSounds(**DATA, features=FEATURES))
    assert torch.isfinite(model.synthetic).all() and not torch.equal(model.synthetic.detach(), start)
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    assert math.isfinite(students.report["student"]["mean"])


def test_student_evaluator_refuses_bad_settings_and_a_distiller_without_a_teacher(data: SyntheticSounds) -> None:
    with pytest.raises(ValueError, match="repeats"):
        StudentEvaluator(repeats=0)
    with pytest.raises(ValueError, match="eval_split"):
        StudentEvaluator(eval_split="train")  # type: ignore[arg-type]
    dm = DM(data.feature_shape, data.num_classes, ipc=1, network_options={"width": 8})
    with pytest.raises(TypeError, match="DM.*SynsetEvaluator"):
        StudentEvaluator().setup(L.Trainer(logger=False), dm, "fit")


# ------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize(
    ("synthesis", "split", "teacher_flag"),
    [("direct", "test", "--model.teacher"), ("generator", "val", "--model.init_args.teacher")],
)  # both spellings of the flag; the config's own teacher path does not exist in the test's folder
def test_cli_inverts_distils_exports_and_reconstructs(
    tmp_path: Path, data: SyntheticSounds, synthesis: str, split: str, teacher_flag: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    teacher = write_teacher(tmp_path / "teacher.safetensors", data)
    main([
        "fit", "--config", str(CONFIGS / "frami_synthetic.yaml"), *CLI_DATA, f"{teacher_flag}={teacher}",
        f"--model.init_args.synthesis={synthesis}", f"--trainer.callbacks.init_args.eval_split={split}", "--model.init_args.ipc=2", "--model.init_args.batch_size=8",
        "--model.init_args.student_options={width: 8, embed_dim: 8}", "--model.init_args.student_steps=3",
        "--trainer.callbacks.init_args.repeats=2", "--trainer.max_steps=2", "--trainer.logger.init_args.save_dir=runs",
    ])
    (report_path,) = tmp_path.glob("runs/**/students.json")
    report = json.loads(report_path.read_text())
    assert report["method"] == "frami" and report["settings"]["synthesis"] == synthesis and report["split"] == split
    assert len(report["student"]["runs"]) == 2 and 0 <= report["student"]["mean"] <= 100
    assert "students" in capfd.readouterr().err  # a bar over 2 students x 3 steps
    assert 0 <= report["teacher"]["accuracy"] <= 100
    assert "| student (statpool, 2 seeds)" in (report_path.parent / "students.md").read_text()
    assert f"Real {split}-split accuracy" in (report_path.parent / "students.md").read_text()
    synset = load_synset(report_path.parent / "distilled")
    assert synset.features.shape == (2 * data.num_classes, *data.feature_shape)
    assert torch.isfinite(synset.features).all() and synset.manifest["method"] == "frami"
    summary = reconstruct([str(report_path.parent / "distilled"), "--n-iter", "2", "--max-per-class", "1"])
    assert len(list((report_path.parent / "distilled" / "audio").rglob("*.wav"))) == data.num_classes
    assert summary  # the reconstruction report


def test_projection_head_is_trained_with_the_contrastive_term(tmp_path: Path, data: SyntheticSounds) -> None:
    teacher = write_teacher(tmp_path / "t.safetensors", data)
    model = frami(teacher, data, projection_dim=8, projection_lr=0.01)
    assert model.projection is not None and model.projection[-1].out_features == 8
    optimizer = model.configure_optimizers()
    assert [group["lr"] for group in optimizer.param_groups] == [model.hparams.lr, 0.01]
    before = [p.detach().clone() for p in model.projection.parameters()]
    losses = losses_of_a_batch(model)
    optimizer.zero_grad()
    losses["total"].backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.projection.parameters()))
    assert frami(teacher, data).projection is None  # the default: NT-Xent on the teacher's embedding


def test_contrastive_term_on_the_pooled_statistics(tmp_path: Path, data: SyntheticSounds) -> None:
    teacher = write_teacher(tmp_path / "t.safetensors", data)
    model = frami(teacher, data, contrastive_features="pooled", projection_dim=8)
    x = model.synthetic.detach()
    features, logits = model.teacher_features(x)
    states = model.teacher.hidden_states(x)
    torch.testing.assert_close(features, states.pooled)  # [B, 2D]: means and stds over time
    torch.testing.assert_close(logits, model.teacher(x))
    assert model.projection[0].in_features == 2 * model.teacher.frame_dim
    embedding, _ = frami(teacher, data).teacher_features(x)
    assert embedding.shape == (len(x), model.teacher.embed_dim)  # the default compares the segment embedding
    losses = losses_of_a_batch(model)
    assert float(losses["contrastive"]) > 0.0
    convnet = write_teacher(tmp_path / "convnet.safetensors", data, network="convnet")
    with pytest.raises(ValueError, match="contrastive_features 'pooled' needs a statistics-pooling teacher"):
        frami(convnet, data, reuse_hidden=False, contrastive_features="pooled")
