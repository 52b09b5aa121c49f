"""docs/extending.md works as written: its distiller file runs through its ``ddlight fit`` and ``ddlight test``
commands, unedited.

The test takes the Python block and the commands out of the guide, so the guide cannot drift from the
code: the file goes into a temporary folder put on ``PYTHONPATH``, and the commands run there at tiny
size (later arguments override the guide's) with a tiny evaluation.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from ddlight.callbacks.student_evaluator import TeacherStudentDistiller
from ddlight.distillers import Distiller
from ddlight.io import load_synset

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "extending.md"
#: Tiny SyntheticSounds and a one-network evaluation against the random subset.
TINY = [
    "--data.init_args.train_per_class=2", "--data.init_args.val_per_class=1", "--data.init_args.test_per_class=1",
    "--data.init_args.duration=0.25", "--model.init_args.ipc=1", "--trainer.max_steps=3",
    "--trainer.enable_progress_bar=false", "--trainer.callbacks.init_args.repeats=1",
    "--trainer.callbacks.init_args.recipe.epochs=2", "--trainer.callbacks.init_args.baselines=[random]",
]


def fenced_blocks(language: str) -> list[str]:
    """The fenced code blocks of the guide in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), flags=re.S | re.M)


def guide_command(subcommand: str) -> list[str]:
    """The arguments after ``ddlight`` of the guide's ``ddlight <subcommand>`` command (run as ``PYTHONPATH=.``),
    with the repository's config and callback files made absolute."""
    (command,) = [block for block in fenced_blocks("bash") if f"ddlight {subcommand}" in block]
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:3] == ["PYTHONPATH=.", "ddlight", subcommand]
    return [re.sub(r"^((?:.*=)?)((?:configs|callbacks)/)", rf"\g<1>{REPO}/\g<2>", word) for word in words[2:]]


def ddlight(args: list[str], folder: Path) -> subprocess.CompletedProcess:
    """``ddlight ARGS`` at tiny size in ``folder``, which is on ``PYTHONPATH``."""
    env = os.environ | {"PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "ddlight", *args, *TINY], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_guides_distiller_runs_through_its_commands(tmp_path: Path) -> None:
    (code,) = fenced_blocks("python")
    module = re.search(r"--model (\w+)\.\w+", " ".join(guide_command("fit"))).group(1)
    (tmp_path / f"{module}.py").write_text(code)
    ddlight(guide_command("fit"), tmp_path)

    (manifest,) = tmp_path.glob("**/distilled/manifest.json")
    synset = load_synset(manifest.parent)
    assert synset.manifest["method"] == "meanmatching" and synset.manifest["step"] == 3
    assert synset.features.shape[0] == synset.manifest["num_classes"] and torch.isfinite(synset.features).all()
    report = json.loads((manifest.parent.parent / "evaluation.json").read_text())
    assert report["method"] == "meanmatching"
    (row,) = report["results"]
    assert row["architecture"] == "convnet" and 0 <= row["synthetic"]["mean"] <= 100 and "random" in row

    tested = ddlight(guide_command("test"), tmp_path)  # the set of the fit's last.ckpt, evaluated again
    assert "eval/convnet_acc" in tested.stdout and "evaluation written to" in tested.stdout
    assert len(list(tmp_path.glob("**/evaluation.json"))) == 2


def test_the_guide_names_only_what_the_base_has() -> None:
    """Every method the guide's prose calls (`` `name(`` or `` `self.name(``) exists on the base class (or on
    the protocol of the StudentEvaluator, for teacher-based distillers)."""
    prose = re.sub(r"^```.*?^```", "", GUIDE.read_text(encoding="utf-8"), flags=re.S | re.M)
    names = set(re.findall(r"`(?:self\.)?(\w+)\(", prose)) | {"needs_real_data"}
    assert {"loss", "hold_real_data", "step_seed", "update", "after_update", "log_step"} <= names
    missing = [name for name in sorted(names) if not hasattr(Distiller, name) and not hasattr(TeacherStudentDistiller, name)]
    assert missing == []
