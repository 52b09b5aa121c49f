"""`make demo` records every expert epoch its MTT reads, and the demo benchmark times what the Makefile runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.demo_time import demo_commands

def option(argv: list[str], name: str) -> str | None:
    """Value of ``--name VALUE`` in ``argv`` (None when absent)."""
    return argv[argv.index(name) + 1] if name in argv else None


def test_demo_commands_are_the_makefiles_ddlight_runs() -> None:
    commands = demo_commands()
    assert list(commands) == ["expert_synthetic", "mtt_synthetic"]
    for argv in commands.values():
        assert argv[1:4] == ["-m", "ddlight", "fit"]
        assert Path(option(argv, "--config")).is_file()


def test_demo_experts_cover_the_mtt_window() -> None:
    """MTT clips its start window to what the experts recorded (with a warning): the demo must record enough."""
    commands = demo_commands()
    experts = commands["expert_synthetic"]
    config = yaml.safe_load(Path(option(experts, "--config")).read_text())
    epochs = int(option(experts, "--trainer.max_epochs") or config["trainer"]["max_epochs"])
    mtt = yaml.safe_load(Path(option(commands["mtt_synthetic"], "--config")).read_text())["model"]["init_args"]
    assert mtt["max_start_epoch"] - 1 + mtt["expert_epochs"] <= epochs
    assert epochs <= config["trainer"]["max_epochs"]  # the demo shortens the shipped experts, never lengthens


def test_demo_commands_reject_a_makefile_without_a_demo_recipe(tmp_path: Path) -> None:
    makefile = tmp_path / "Makefile"
    makefile.write_text("demo: install\n\ntest: install\n\tpytest\n")
    with pytest.raises(ValueError, match="demo recipe"):
        demo_commands(makefile)
    makefile.write_text("test: install\n\tpytest\n")  # no demo target at all
    with pytest.raises(ValueError, match="demo recipe"):
        demo_commands(makefile)
