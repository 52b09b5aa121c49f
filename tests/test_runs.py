"""Runs that survive: a real ``ddlight fit`` killed mid-run resumes exactly; SIGTERM/SIGINT save and exit non-zero."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddlight.distillers.formation import decode
from ddlight.io import load_synset

REPO = Path(__file__).resolve().parents[1]
DATA = {"train_per_class": 2, "val_per_class": 1, "test_per_class": 1, "duration": 0.25}

#: A callback the subprocess imports: at a given step it sends its own process a signal.
SIGNALLER = '''
import os
import signal

from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    def __init__(self, step: int, signal_name: str) -> None:
        self.step, self.signal = step, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)
'''


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny ConvNet experts (width 8, 3 epochs) recorded by ``configs/expert_synthetic.yaml`` on :data:`DATA`."""
    workdir = tmp_path_factory.mktemp("experts")
    args = ["fit", "--config", str(REPO / "configs/expert_synthetic.yaml"), *_data_args(), "--trainer.max_epochs=3",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--model.init_args.num_models=2",
            "--model.init_args.network_options.width=8", "--test_after_fit=false"]
    done = subprocess.run([sys.executable, "-m", "ddlight", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir / "experts/synthetic"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FRAMI teacher (statpool, width 8, 1 epoch) written by ``configs/model/teacher.yaml`` on :data:`DATA`."""
    workdir = tmp_path_factory.mktemp("teacher")
    args = ["fit", "--config", str(REPO / "configs/expert_synthetic.yaml"), "--config",
            str(REPO / "configs/model/teacher.yaml"), *_data_args(), "--trainer.max_epochs=1", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--model.init_args.network_options={width: 8, embed_dim: 8}",
            "--test_after_fit=false"]
    done = subprocess.run([sys.executable, "-m", "ddlight", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir / "teachers/synthetic/network_000.safetensors"


def _data_args() -> list[str]:
    return [f"--data.init_args.{key}={value}" for key, value in DATA.items()]


#: Tiny settings per distiller: (config, model overrides). MTT runs its checkpointed unroll with soft labels
#: and an EMA; RFAD validates every 2 steps so its early-stopping state crosses the interruption; FRAMI
#: inverts its teacher through the conditional generator (its weights and Adam state cross it too).
METHODS = {
    "mtt": ("mtt_synthetic", {  # formation 2 from the config, as RFAD's
        "ipc": 1, "syn_steps": 3, "min_start_epoch": 0, "max_start_epoch": 2, "expert_epochs": 1, "batch_syn": 5,
        "ema_decay": 0.9, "learn_labels": "true", "unroll": "checkpointed", "segment": 2}),
    "rfad": ("rfad_synthetic", {  # the config's formation 2: each stored sample starts from both real clips of a class
        "ipc": 1, "num_models": 2, "width": 8, "real_batch": 16, "num_eval_models": 1, "learn_labels": "true",
        "patience": 10}),
    "frami": ("frami_synthetic", {
        "ipc": 2, "batch_size": 8, "synthesis": "generator"}),
}


def _run(workdir: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m ddlight <args>`` in ``workdir`` (one thread; the signaller importable; Ctrl-C's default action).

    A shell starts background jobs (``make test &``) with SIGINT ignored, which Python and so the run would
    inherit: the run gets SIGINT's default action back before it starts.
    """
    env = os.environ | {"PYTHONPATH": str(workdir), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ddlight", *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _fit(workdir: Path, experts: Path, version: int, *extra: str, method: str = "mtt",
         teacher: Path | None = None) -> subprocess.CompletedProcess:
    """``ddlight fit --config configs/<method>_synthetic.yaml`` at tiny size in a subprocess (run folder version_N)."""
    (workdir / "signaller.py").write_text(SIGNALLER)
    config, model = METHODS[method]
    args = [
        "fit", "--config", str(REPO / f"configs/{config}.yaml"), *_data_args(),
        "--trainer.max_steps=6", "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]",
        f"--trainer.logger.init_args.version={version}",
        *(f"--model.init_args.{key}={value}" for key, value in model.items()),
        *{"mtt": [f"--model.init_args.expert_dir={experts}"], "rfad": ["--trainer.val_check_interval=2"],
          "frami": [f"--model.init_args.teacher={teacher}"]}[method],
        *extra,
    ]
    return _run(workdir, args)


def _signal_at(step: int, name: str) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": "signaller.SignalAt",
                                                 "init_args": {"step": step, "signal_name": name}})


def _run_dir(workdir: Path, version: int, method: str = "mtt") -> Path:
    return workdir / f"runs/{method}_synthetic/lightning_logs" / f"version_{version}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", list(METHODS))
def test_killed_mid_run_resumes_exactly(experts: Path, teacher: Path, tmp_path: Path, method: str) -> None:
    fit = partial(_fit, method=method, teacher=teacher)
    reference = fit(tmp_path, experts, 0)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = fit(tmp_path, experts, 1, _signal_at(3, "SIGKILL"))
    assert killed.returncode == -9  # SIGKILL: no handler ran, only the checkpoints written so far remain
    assert (_run_dir(tmp_path, 1, method) / "checkpoints/last.ckpt").is_file()
    assert not (_run_dir(tmp_path, 1, method) / "distilled").exists()

    resumed = fit(tmp_path, experts, 1, "--ckpt_path=last", "--trainer.enable_progress_bar=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stderr + resumed.stdout
    assert re.search(r"Steps: 100%.* 6/6 ", resumed.stdout)  # one bar over the updates, resumed at step 3
    assert "Epoch 0" not in resumed.stdout

    final = {v: torch.load(_run_dir(tmp_path, v, method) / "checkpoints/last.ckpt", weights_only=True) for v in (0, 1)}
    assert final[0]["global_step"] == final[1]["global_step"] == 6
    state, other = final[0]["state_dict"], final[1]["state_dict"]
    assert {"synthetic", *(["label_logits"] if method != "frami" else [])} <= set(state) and state.keys() == other.keys()
    for key in state:  # set, soft labels, step size / EMA (MTT), best snapshot (RFAD): bitwise equal on CPU
        assert torch.equal(state[key], other[key]), key
    for opt, opt_other in zip(final[0]["optimizer_states"], final[1]["optimizer_states"]):  # momentum / Adam moments
        for slot, slot_other in zip(opt["state"].values(), opt_other["state"].values()):
            for name in slot:
                assert torch.equal(torch.as_tensor(slot[name]), torch.as_tensor(slot_other[name])), name
    exported = [load_file(_run_dir(tmp_path, v, method) / "distilled/synset.safetensors") for v in (0, 1)]
    assert exported[0].keys() == exported[1].keys()
    for key in exported[0]:
        assert torch.equal(exported[0][key], exported[1][key]), key
    manifests = [load_synset(_run_dir(tmp_path, v, method) / "distilled").manifest for v in (0, 1)]
    assert manifests[0].get("syn_lr") == manifests[1].get("syn_lr") and manifests[1]["partial"] is False


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("name", "status"), [("SIGTERM", 143), ("SIGINT", 1)])
def test_signals_save_a_checkpoint_and_a_partial_set_and_exit_non_zero(
    experts: Path, tmp_path: Path, name: str, status: int
) -> None:
    stopped = _fit(tmp_path, experts, 0, "--trainer.max_steps=1000", _signal_at(3, name))
    assert stopped.returncode == status, stopped.stderr[-3000:]
    run = _run_dir(tmp_path, 0)
    checkpoint = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert 3 <= checkpoint["global_step"] <= 4
    synset = load_synset(run / "distilled")
    assert synset.manifest["partial"] is True and synset.manifest["step"] == checkpoint["global_step"]
    stored_ema = checkpoint["state_dict"]["synthetic_ema"]  # the export is its decoded set (formation 2)
    assert torch.equal(synset.features, decode(stored_ema, synset.manifest["formation"]))


#: Active learning at tiny size: 55 pool clips, 1 network, 2 strategies, budgets 22 and 33 reached in
#: increments of 5, so the study runs 8 rounds (one Lightning epoch and one global step each).
AL_ARGS = [
    "--data.init_args.train_per_class=5", "--data.init_args.val_per_class=1", "--data.init_args.test_per_class=2",
    "--data.init_args.duration=0.25", "--data.init_args.sample_rate=8000", "--data.init_args.features.n_fft=256",
    "--data.init_args.features.hop_length=256", "--data.init_args.features.n_mels=20",
    "--data.init_args.features.n_mfcc=10", "--model.init_args.networks=[cnn4]",
    "--model.init_args.network_options={cnn4: {width: 4}}", "--model.init_args.strategies=[bald,random]",
    "--model.init_args.budget_unit=count", "--model.init_args.budgets=[22,33]", "--model.init_args.repeats=1",
    "--model.init_args.recipe.epochs=2", "--model.init_args.mc_passes=2",
]


def _fit_al(workdir: Path, version: int, *extra: str) -> subprocess.CompletedProcess:
    """``ddlight fit --config configs/al_synthetic.yaml`` at tiny size in a subprocess (run folder version_N)."""
    (workdir / "signaller.py").write_text(SIGNALLER)
    args = ["fit", "--config", str(REPO / "configs/al_synthetic.yaml"), *AL_ARGS, "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.version={version}", *extra]
    return _run(workdir, args)


@pytest.mark.timeout(600)
def test_active_learning_killed_mid_study_resumes_exactly(tmp_path: Path) -> None:
    reference = _fit_al(tmp_path, 0)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = _fit_al(tmp_path, 1, _signal_at(3, "SIGKILL"))
    assert killed.returncode == -9
    run = tmp_path / "runs/al_synthetic/lightning_logs/version_1"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 2  # rounds 1-2 saved
    assert not (run / "al_results.json").exists()

    resumed = _fit_al(tmp_path, 1, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = [json.loads((tmp_path / f"runs/al_synthetic/lightning_logs/version_{v}/al_results.json").read_text())
               for v in (0, 1)]
    assert len(results[0]["results"]) == 2 and results[0] == results[1]  # every accuracy of every budget
    states = [torch.load(tmp_path / f"runs/al_synthetic/lightning_logs/version_{v}/checkpoints/last.ckpt",
                         weights_only=True) for v in (0, 1)]
    assert states[0]["global_step"] == states[1]["global_step"] == 8
    extra = [s["state_dict"]["_extra_state"] for s in states]
    assert len(extra[0]["labelled"]["cnn4/bald/0"]) == 33
    assert extra[0] == extra[1]  # the labelled sets of every run, item by item, and the per-run records
