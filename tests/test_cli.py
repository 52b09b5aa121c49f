"""The ddlight command: help, config printing and every expert config end to end (fast_dev_run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import wandb
import yaml

from ddlight.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: Overrides that keep a file-based dataset config tiny.
SMALL_AUDIO = [
    "--data.init_args.sample_rate=8000",
    "--data.init_args.duration=0.5",
    "--data.init_args.batch_size=4",
    "--data.init_args.features.n_fft=256",
    "--data.init_args.features.hop_length=128",
    "--data.init_args.features.n_mels=20",
    "--data.init_args.features.n_mfcc=10",
]
SMALL_SYNTHETIC = [
    "--data.init_args.train_per_class=4",
    "--data.init_args.val_per_class=2",
    "--data.init_args.test_per_class=2",
    "--data.init_args.duration=0.5",
]


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "fit" in out and "test" in out


def test_fit_help_documents_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "--test_after_fit" in capsys.readouterr().out


def test_fit_help_lists_every_ddlight_module_and_datamodule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # help text wraps lines
    for name in ("distillers.MTT", "distillers.RFAD", "distillers.DC", "distillers.DM", "distillers.FRAMI",
                 "tasks.Classifier", "active_learning.ActiveLearner", "data.UrbanSound8K", "data.ESC50",
                 "data.SpeechCommands", "data.AudioMNIST", "data.SyntheticSounds", "data.SynsetDataModule"):
        assert f"ddlight.{name}" in out, name


@pytest.mark.parametrize(("name", "argument"), [("MTT", "--model.syn_steps"), ("RFAD", "--model.num_models")])
def test_short_class_names_resolve(name: str, argument: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", name])
    assert exit_info.value.code == 0 and argument in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # and as the model of a run
        main(["fit", "--model", name, "--data", "SyntheticSounds", "--print_config"])
    assert exit_info.value.code == 0 and f"class_path: ddlight.distillers.{name}" in capsys.readouterr().out


def test_module_entry_point_is_the_same_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ddlight", "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    assert "fit" in out.stdout


def test_print_config_resolves_data_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "expert_us8k.yaml"), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["class_path"] == "ddlight.data.urbansound8k.UrbanSound8K"
    assert config["model"]["class_path"] == "ddlight.tasks.Classifier"


def _run_expert(config: str, extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    experts = tmp_path / "experts"
    main(
        ["fit", "--config", str(CONFIGS / config), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
         "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
         f"--trainer.callbacks.init_args.dirpath={experts}", "--model.init_args.num_models=2",
         "--model.init_args.network_options.width=8", *extra]
    )
    return experts


def test_expert_synthetic_records_trajectories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    experts = _run_expert("expert_synthetic.yaml", SMALL_SYNTHETIC, tmp_path, monkeypatch)
    manifest = yaml.safe_load((experts / "manifest.json").read_text())
    assert [e["file"] for e in manifest["experts"]] == ["expert_000.safetensors", "expert_001.safetensors"]
    assert manifest["data"]["dataset"] == "synthetic"
    assert all("test_accuracy" in e for e in manifest["experts"])


@pytest.mark.parametrize(
    ("config", "fixture"),
    [
        ("expert_gsc.yaml", "gsc_root"),
        ("expert_us8k.yaml", "us8k_root"),
        ("expert_esc50.yaml", "esc50_root"),
        ("expert_audiomnist.yaml", "audiomnist_root"),
    ],
)
def test_expert_configs_on_official_layouts(
    config: str, fixture: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = request.getfixturevalue(fixture)
    experts = _run_expert(config, [f"--data.init_args.root={root}", *SMALL_AUDIO], tmp_path, monkeypatch)
    manifest = yaml.safe_load((experts / "manifest.json").read_text())
    assert manifest["in_shape"] == [3, 10, 0.5 * 8000 // 128 + 1]
    assert len(manifest["experts"]) == 2


def test_wandb_logger_works_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B with no account and no network: an offline run folder to sync later."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _run_expert(
        "expert_synthetic.yaml",
        [*SMALL_SYNTHETIC, f"--trainer.logger={CONFIGS / 'logger' / 'wandb.yaml'}",
         "--trainer.logger.init_args.save_dir=runs"],
        tmp_path,
        monkeypatch,
    )
    wandb.finish()  # flush the run file (another test's run may share this process)
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert (runs[0] / "files").is_dir() and (runs[0] / "logs").is_dir()


def test_wandb_and_csv_runs_of_one_config_land_in_their_own_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run folder holds its own config, checkpoints and distilled set; W&B gets the whole config."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    tiny = ["--data.init_args.train_per_class=2", "--data.init_args.val_per_class=1",
            "--data.init_args.test_per_class=1", "--data.init_args.duration=0.25", "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", "--model.init_args.ipc=1",
            "--model.init_args.num_models=1", "--model.init_args.width=8", "--model.init_args.real_batch=8",
            "--model.init_args.num_eval_models=1"]
    wandb_logger = [f"--trainer.logger={CONFIGS / 'logger' / 'wandb.yaml'}", "--trainer.logger.init_args.save_dir=runs"]
    logged = []
    for logger in (wandb_logger, wandb_logger, []):
        main(["fit", "--config", str(CONFIGS / "rfad_synthetic.yaml"), *tiny, *logger])
        if logger:
            logged.append(dict(wandb.run.config))
            wandb.finish()
    folders = sorted(p.parent for p in (tmp_path / "runs").rglob("config.yaml"))
    assert len(folders) == 3 and len({p.name for p in folders}) == 3  # two W&B run ids and version_0
    assert not (tmp_path / "runs" / "config.yaml").exists() and not (tmp_path / "runs" / "distilled").exists()
    for folder in folders:
        assert (folder / "distilled" / "synset.safetensors").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["data"]["init_args"]["train_per_class"] == 2 and config["trainer"]["max_steps"] == 2
    assert len(list((tmp_path / "runs" / "wandb").glob("offline-run-*"))) == 2
    for config in logged:  # the whole config, not only the model's arguments, and the run's folder
        assert config["config"]["trainer"]["max_steps"] == 2
        assert config["config"]["data"]["class_path"].endswith("SyntheticSounds")
        assert Path(config["run_dir"]) in folders


@pytest.mark.parametrize("dataset", ["synthetic", "us8k", "esc50", "audiomnist"])
def test_frami_configs_resolve(dataset: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / f"frami_{dataset}.yaml"), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"] == "ddlight.distillers.FRAMI"
    assert config["model"]["init_args"]["teacher"] == f"teachers/{dataset}/network_000.safetensors"
    assert config["data"]["init_args"]["features"]["name"] == "fdmfcc"


def test_teacher_config_replaces_the_expert_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "expert_us8k.yaml"), "--config", str(CONFIGS / "model/teacher.yaml"),
              "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["network"] == "statpool"
    assert config["model"]["init_args"]["num_models"] == 1
    (callback,) = config["trainer"]["callbacks"]
    assert callback["class_path"] == "ddlight.callbacks.NetworkExport"
    assert callback["init_args"]["dirpath"] is None  # not the expert's trajectory folder


def _runs() -> list[list[str]]:
    """Every ``ddlight fit`` config, and each overlay (``<stage>_<ds>_ipc<N>.yaml``) after its base config.

    The downstream studies' configs (``continual_*``, ``nas_*``) belong to ``python -m ddlight.downstream.*``
    and are parsed by its tests (tests/downstream).
    """
    runs = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.name.startswith(("continual_", "nas_")):
            continue
        base = path.name.split("_ipc")[0] + ".yaml"
        runs.append([str(CONFIGS / base), str(path)] if "_ipc" in path.name else [str(path)])
    return runs


@pytest.mark.parametrize("configs", _runs(), ids=lambda c: Path(c[-1]).name)
def test_every_config_resolves(configs: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit"] + [arg for c in configs for arg in ("--config", c)] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"].startswith(("ddlight.", "lightning."))
    assert "class_path" in config["data"]
    if "_ipc" in configs[-1]:
        assert config["model"]["init_args"]["ipc"] == int(Path(configs[-1]).stem.split("_ipc")[1])


@pytest.mark.parametrize("configs", [c for c in _runs() if Path(c[0]).name.startswith("mtt_")],
                         ids=lambda c: Path(c[-1]).name)
def test_mtt_start_window_fits_the_shipped_experts(configs: list[str]) -> None:
    """Every MTT config (and overlay) draws start epochs its dataset's expert config records (no clipping)."""
    mtt = {}
    for path in configs:
        mtt |= yaml.safe_load(Path(path).read_text())["model"]["init_args"]
    dataset = Path(configs[0]).stem.removeprefix("mtt_")
    epochs = yaml.safe_load((CONFIGS / f"expert_{dataset}.yaml").read_text())["trainer"]["max_epochs"]
    assert mtt["max_start_epoch"] - 1 + mtt["expert_epochs"] <= epochs
