"""``ddlight test``, ``validate`` and ``predict`` on distillers: the protocol on a checkpoint's set, the method's
own validation measure, and one-line refusals where there is nothing to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddlight.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_DATA = ["--data.init_args.train_per_class=2", "--data.init_args.val_per_class=1",
             "--data.init_args.test_per_class=1", "--data.init_args.duration=0.25"]
TINY_EVALUATION = ["--trainer.callbacks.init_args.repeats=1", "--trainer.callbacks.init_args.recipe.epochs=2",
                   "--trainer.callbacks.init_args.architectures=[convnet]", "--trainer.callbacks.init_args.baselines=[random]"]
TINY_RFAD = ["--model.init_args.ipc=1", "--model.init_args.num_models=1", "--model.init_args.width=8",
             "--model.init_args.num_eval_models=1", "--model.init_args.real_batch=16"]


def refusal(args: list[str]) -> str:
    """The one line ``ddlight`` exits with."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value.code)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("config", ["mtt_synthetic.yaml", "rfad_synthetic.yaml", "dm_synthetic.yaml"])
def test_test_and_validate_refuse_a_set_that_was_never_trained(config: str) -> None:
    message = refusal(["test", "--config", str(CONFIGS / config)])
    assert "never trained; pass --ckpt_path PATH" in message


def test_validate_without_a_measure_and_predict_refuse_in_one_line() -> None:
    message = refusal(["validate", "--config", str(CONFIGS / "mtt_synthetic.yaml"), "--ckpt_path", "x.ckpt"])
    assert message.startswith("MTT has no validation measure of its own; `ddlight test --ckpt_path PATH`")
    message = refusal(["predict", "--config", str(CONFIGS / "dm_synthetic.yaml")])
    assert message.startswith("DM does not predict: a distiller's output is its distilled set")


def test_test_without_the_evaluator_refuses() -> None:
    message = refusal(["test", "--config", str(CONFIGS / "rfad_synthetic.yaml"), "--trainer.callbacks=[]",
                       "--ckpt_path", "x.ckpt"])
    assert "--trainer.callbacks+=callbacks/synset_evaluator.yaml" in message


def test_a_checkpoints_set_is_tested_with_the_protocol_and_validated_by_its_measure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    rfad = ["--config", str(CONFIGS / "rfad_synthetic.yaml"), *TINY_DATA, *TINY_RFAD, *TINY_EVALUATION,
            "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0"]
    main(["fit", *rfad, "--trainer.max_steps=2"])
    checkpoint = next(tmp_path.glob("runs/rfad_synthetic/**/checkpoints/last.ckpt"))
    capsys.readouterr()

    main(["test", *rfad, "--ckpt_path", str(checkpoint)])
    out = capsys.readouterr().out
    assert "eval/convnet_acc" in out and "eval/convnet_random_acc" in out  # Lightning's table of test metrics
    assert "evaluation written to" in out
    reports = sorted(tmp_path.glob("runs/rfad_synthetic/**/evaluation.json"))
    assert len(reports) == 2  # the fit's and the test's, each in its own run folder
    tested = json.loads(reports[-1].read_text())
    assert tested["method"] == "rfad" and tested["results"][0]["architecture"] == "convnet"

    main(["validate", *rfad, "--trainer.limit_val_batches=1.0", "--ckpt_path", str(checkpoint)])
    assert "val/acc" in capsys.readouterr().out  # RFAD's kernel-regression accuracy on the validation split
