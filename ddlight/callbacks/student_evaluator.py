"""StudentEvaluator: students distilled from a teacher on synthetic data, tested on real data."""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn
from tqdm.auto import tqdm

from ddlight.io import atomic_write, save_json
from ddlight.recipe import Progress, accuracy, summarize
from ddlight.runs import run_dir

REPORT_JSON = "students.json"
REPORT_MD = "students.md"


@runtime_checkable
class TeacherStudentDistiller(Protocol):
    """What :class:`StudentEvaluator` needs of a distiller (FRAMI is one).

    Attributes:
        teacher: The trained network whose knowledge the synthetic data carries.
    """

    teacher: nn.Module

    def train_student(self, seed: int, progress: Progress | None = None) -> nn.Module:
        """A fresh student trained from the teacher on the synthetic data (seeded; ``progress`` per step)."""

    def student_report(self) -> dict[str, Any]:
        """The report's description of the run: ``method``, ``ipc``, ``settings`` (shown in the title),
        ``teacher`` (``network``) and ``student`` (``network``, ``options`` and ``steps``, the length of one
        student's training, which sizes the progress bar); accuracies are added by the callback."""


class StudentEvaluator(Callback):
    """Train ``repeats`` students (seeds 0, 1, ...) at the end of ``fit`` and test them beside the teacher.

    A data-free distiller's set is judged by the students it teaches: the distiller trains each one
    (:meth:`TeacherStudentDistiller.train_student`); this callback tests it, last step, on the real
    ``eval_split``, logs ``eval/student_acc`` and ``eval/teacher_acc`` and writes ``students.json`` /
    ``students.md`` into the run's folder (:func:`ddlight.runs.run_dir`). Runs on rank 0 only.

    Args:
        repeats: Students trained and tested.
        eval_split: Real split the students and the teacher are tested on: ``test``, or ``val`` to tune
            hyperparameters without looking at the test split (the report records it).
    """

    def __init__(self, repeats: int = 3, eval_split: Literal["test", "val"] = "test") -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if eval_split not in ("test", "val"):
            raise ValueError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
        self.repeats = repeats
        self.eval_split = eval_split
        self.report: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, TeacherStudentDistiller):
            raise TypeError(
                f"StudentEvaluator needs a distiller with a teacher, train_student() and student_report() "
                f"(FRAMI), got {type(pl_module).__name__}; use SynsetEvaluator to evaluate its set"
            )

    def evaluate(self, trainer: L.Trainer, pl_module: TeacherStudentDistiller) -> dict[str, Any]:
        """Train and test the students and the teacher: the ``students.json`` document."""
        x, y = trainer.datamodule.split_features(self.eval_split, device=pl_module.device)
        described = pl_module.student_report()
        steps = described["student"].get("steps", 1)
        with tqdm(total=self.repeats * steps, desc="students", unit="step", leave=False,
                  disable=trainer.progress_bar_callback is None) as bar:
            runs = [accuracy(pl_module.train_student(seed, bar.update), x, y) for seed in range(self.repeats)]
        return described | {
            "dataset": trainer.datamodule.describe().get("dataset"),
            "split": self.eval_split,
            "teacher": described["teacher"] | {"accuracy": round(accuracy(pl_module.teacher, x, y), 4)},
            "student": described["student"] | summarize(runs),
        }

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = run_dir(trainer)  # on every rank: the folder is broadcast under DDP
        if not trainer.is_global_zero:
            return
        self.report = self.evaluate(trainer, pl_module)
        metrics = {
            "eval/student_acc": self.report["student"]["mean"],
            "eval/teacher_acc": self.report["teacher"]["accuracy"],
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        save_json(directory / REPORT_JSON, self.report)
        text = markdown_report(self.report)
        atomic_write(directory / REPORT_MD, lambda tmp: tmp.write_text(text))
        print(text, end="")
        print(f"student evaluation written to {directory / REPORT_JSON}")


def markdown_report(report: dict[str, Any]) -> str:
    """The teacher and student rows of a ``students.json`` document as a Markdown table."""
    student = report["student"]
    settings = ", ".join(f"{key} {value}" for key, value in report.get("settings", {}).items())
    return (
        f"Real {report['split']}-split accuracy (%) on {report['dataset']} "
        f"({report['method']}{'; ' + settings if settings else ''}).\n\n"
        "| model | accuracy |\n|---|---|\n"
        f"| teacher ({report['teacher']['network']}) | {report['teacher']['accuracy']:.2f} |\n"
        f"| student ({student['network']}, {len(student['runs'])} seeds) "
        f"| {student['mean']:.2f} ± {student['std']:.2f} |\n"
    )
