"""Every command the README documents works as written.

The commands are read from the README itself: every line of a fenced code block that starts with
``ddlight `` or ``python -m ddlight`` / ``python -m benchmarks`` (``\\`` continuation lines joined), plus
the inline ``python -m ...`` commands of the prose that carry options. Each one is a test case, checked in
the cheapest way that still proves it runs as written:

- ``ddlight <subcommand> ...`` runs in-process with ``--print_config`` appended: the configs, class names
  and every argument are parsed and type-checked, nothing trains (data roots need not exist).
- ``python -m <module> ...`` is run as ``python -m`` runs it (:func:`runpy.run_module` as ``__main__``,
  the module's own ``sys.argv``), with every ``ArgumentParser.parse_args`` (argparse and jsonargparse)
  stopping the program right after a successful parse: a wrong option name, a missing required option, a
  config file that does not exist or does not fit the command fails the test; the work never starts.
- Concrete paths in a command must be where ddlight puts things: ``runs/<stage>_<dataset>/...`` must be a
  run directory of ``configs/<stage>_<dataset>.yaml`` (the folder its logger gives version N, as
  :func:`ddlight.runs.run_dir` uses it) followed by an output that run writes (``distilled`` from a
  distiller, ``evaluation.json`` from the ``SynsetEvaluator`` callback, ``al_results.json`` from the
  ``ActiveLearner``); ``experts/<dataset>`` must be where ``configs/expert_<dataset>.yaml`` records;
  ``configs/...`` and ``callbacks/...`` files must exist.

README notation: ``...`` (the rest as above) is dropped; an optional ``[--option VALUE]`` is checked
(``[more evaluation.json]`` and other optional words without an option are dropped); upper-case
placeholders are replaced through :data:`PLACEHOLDERS`; ``runs/.../distilled`` (any run) is passed as is.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
import unittest.mock
import warnings
from pathlib import Path
from typing import Any

import jsonargparse
import pytest
import yaml

from ddlight.active_learning import ActiveLearner
from ddlight.active_learning.report import RESULTS_JSON
from ddlight.callbacks import SynsetEvaluator
from ddlight.callbacks.trajectory import TrajectoryRecorder
from ddlight.cli import main as ddlight_main
from ddlight.distillers import Distiller
from ddlight.evaluation.report import REPORT_JSON, REPORT_MD

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: Fewest commands the README must yield (it documents 24 when this was written): the extraction
#: cannot silently find nothing.
MIN_COMMANDS = 20

#: Line starts of documented commands inside fenced blocks (``make``, ``pip``, ``wandb sync`` are not ours).
PREFIXES = ("ddlight ", "python -m ddlight", "python -m benchmarks")

#: README placeholders and what the test passes for them (``{tmp}``: the test's temporary folder).
PLACEHOLDERS = {
    "FILE": "teachers/synthetic/network_000.safetensors",  # --model.teacher FILE (FRAMI's teacher)
    "DIR": "{tmp}/out",  # --out DIR
    "NAME": "readme",  # --name NAME
}

#: What a run writes into its run directory, and which model / callback class writes it.
RUN_OUTPUTS = {
    "distilled": ("model", Distiller),
    REPORT_JSON: ("callback", SynsetEvaluator),
    REPORT_MD: ("callback", SynsetEvaluator),
    RESULTS_JSON: ("model", ActiveLearner),
}


def _fenced_commands(text: str) -> list[str]:
    """Command lines of the fenced code blocks, continuation lines joined."""
    commands: list[str] = []
    in_block, pending = False, None
    for line in text.splitlines():
        if line.startswith("```"):
            assert pending is None, f"README: a continued command runs off the end of its block: {pending}"
            in_block = not in_block
            continue
        if not in_block:
            continue
        stripped = line.strip()
        if pending is not None:
            pending = f"{pending} {stripped}"
        elif stripped.startswith(PREFIXES):
            pending = stripped
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        commands.append(pending)
        pending = None
    return commands


def _inline_commands(text: str) -> list[str]:
    """Inline ``python -m ...`` commands of the prose (outside fenced blocks) that have arguments."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`(python -m (?:ddlight|benchmarks)[^`]*)`", prose)
    return [span for span in spans if len(span.split()) > 3]  # bare module names are prose, not commands


def readme_commands() -> list[str]:
    """Every documented command, once each, normalised to single spaces (comments kept for the id)."""
    text = README.read_text(encoding="utf-8")
    seen: dict[str, None] = {}
    for command in _fenced_commands(text) + _inline_commands(text):
        seen.setdefault(" ".join(command.split()), None)
    return list(seen)


COMMANDS = readme_commands()


def arguments(command: str, tmp: Path) -> list[str]:
    """The argument list the command means: comments, ``...`` and optional words dropped, placeholders filled."""
    tokens = shlex.split(command, comments=True)
    out: list[str] = []
    group: list[str] | None = None
    for token in tokens:
        if group is None and token.startswith("["):
            group, token = [], token[1:]
        if group is not None:
            closing = token.endswith("]")
            group.append(token[:-1] if closing else token)
            if closing:
                if group[0].startswith("-"):  # an optional option: check it too
                    out.extend(group)
                group = None
            continue
        if token != "...":
            out.append(token)
    assert group is None, f"unclosed [ in {command!r}"
    filled = []
    for token in out:
        if re.fullmatch(r"[A-Z][A-Z_]+", token):
            if token not in PLACEHOLDERS:
                pytest.fail(f"README placeholder {token} has no value in PLACEHOLDERS (tests/test_readme.py)")
            token = PLACEHOLDERS[token].format(tmp=tmp)
        filled.append(token)
    return filled


def test_readme_yields_commands() -> None:
    assert len(COMMANDS) >= MIN_COMMANDS, COMMANDS
    assert any(c.startswith("ddlight fit") for c in COMMANDS)
    assert any(c.startswith("python -m ddlight.") for c in COMMANDS)


# ---------------------------------------------------------------------------------------------------------
# the ddlight command and the configs behind run paths


def print_config(args: list[str]) -> dict[str, Any]:
    """``ddlight <args> --print_config`` in-process; the printed config (fails unless it exits 0)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
            unittest.mock.patch.object(sys, "argv", ["ddlight"]):
        try:
            ddlight_main([*args, "--print_config"])
        except SystemExit as exit_info:
            code = exit_info.code
        else:
            code = "no exit (--print_config ignored?)"
    if code not in (0, None):
        pytest.fail(f"ddlight {shlex.join(args)} --print_config exited {code}:\n{stderr.getvalue()[-3000:]}")
    return yaml.safe_load(stdout.getvalue())


@functools.lru_cache(maxsize=None)
def config_of(config_file: str) -> dict[str, Any]:
    """The whole resolved ``fit`` config of a config file (cached: several commands name the same run)."""
    return print_config(["fit", "--config", config_file])


def _class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _callbacks(config: dict[str, Any]) -> list[dict[str, Any]]:
    callbacks = config["trainer"].get("callbacks") or []
    return callbacks if isinstance(callbacks, list) else [callbacks]


def check_run_path(path: str) -> None:
    """``runs/<stage>_<dataset>/...`` is a run directory of that config followed by something the run writes."""
    parts = Path(path).parts
    config_file = f"configs/{parts[1]}.yaml"
    assert (REPO / config_file).is_file(), f"{path}: no {config_file} writes runs/{parts[1]}/"
    config = config_of(config_file)
    logger = config["trainer"]["logger"]
    versions = [i for i, part in enumerate(parts) if re.fullmatch(r"version_\d+", part)]
    logger_class = _class(logger["class_path"])
    expected = logger_class(**{**logger["init_args"], "version": 0}).log_dir
    assert versions, f"{path}: {config_file} writes its runs into {Path(expected).parent}/version_N/"
    end = versions[0]
    run = logger_class(**{**logger["init_args"], "version": int(parts[end][len("version_"):])}).log_dir
    assert Path(*parts[: end + 1]) == Path(run), f"{path}: {config_file} writes its runs into {Path(expected).parent}/version_N/"
    rest = parts[end + 1:]
    assert len(rest) == 1 and rest[0] in RUN_OUTPUTS, f"{path}: a run directory holds {sorted(RUN_OUTPUTS)}, not {rest}"
    kind, writer = RUN_OUTPUTS[rest[0]]
    if kind == "model":
        model = _class(config["model"]["class_path"])
        assert issubclass(model, writer), f"{path}: {config_file} runs {model.__name__}, which writes no {rest[0]}"
    else:
        classes = [_class(c["class_path"]) for c in _callbacks(config)]
        assert any(issubclass(c, writer) for c in classes), f"{path}: {config_file} has no {writer.__name__}"


def check_expert_dir(path: str) -> None:
    """``experts/<dataset>`` is where ``configs/expert_<dataset>.yaml`` records its trajectories."""
    config_file = f"configs/expert_{Path(path).name}.yaml"
    assert (REPO / config_file).is_file(), f"{path}: no {config_file}"
    dirpaths = [
        str(c["init_args"].get("dirpath")) for c in _callbacks(config_of(config_file))
        if issubclass(_class(c["class_path"]), TrajectoryRecorder)
    ]
    assert path.rstrip("/") in dirpaths, f"{path}: {config_file} records into {dirpaths}"


def check_paths(args: list[str]) -> None:
    """Every concrete path of the command is where ddlight reads or writes it."""
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if "..." in value or value.startswith("-"):
            continue
        if value.startswith("runs/"):
            check_run_path(value)
        elif value.startswith("experts/"):
            check_expert_dir(value)
        elif value.startswith(("configs/", "callbacks/")):
            assert (REPO / value).is_file(), f"{value} does not exist"


# ---------------------------------------------------------------------------------------------------------
# python -m modules: run as python -m does, stop right after the argument parser accepted the arguments


class Parsed(Exception):
    """Raised by the patched ``parse_args`` once the outermost parse succeeded."""


def stop_after_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    depth = 0
    for parser_class in (argparse.ArgumentParser, jsonargparse.ArgumentParser):
        original = parser_class.parse_args

        def parse_args(self, *args, _original=original, **kwargs):
            nonlocal depth
            depth += 1
            try:
                namespace = _original(self, *args, **kwargs)
            finally:
                depth -= 1
            if depth == 0:
                raise Parsed(namespace)
            return namespace

        monkeypatch.setattr(parser_class, "parse_args", parse_args)


def run_module_parse_only(module: str, args: list[str]) -> None:
    """``python -m module args`` up to its parsed command line (the patches are undone on return)."""
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.syspath_prepend(str(REPO))  # python -m puts the working directory first: benchmarks/
        monkeypatch.setattr(sys, "argv", [module, *args])
        stop_after_parsing(monkeypatch)
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
        try:
            with contextlib.redirect_stderr(stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already imported by the test
                runpy.run_module(module, run_name="__main__", alter_sys=True)
        except Parsed:
            return
        except SystemExit as exit_info:
            pytest.fail(f"python -m {module} {shlex.join(args)} exited {exit_info.code}:\n{stderr.getvalue()[-3000:]}")
    pytest.fail(f"python -m {module} finished without parsing a command line (no __main__ entry point?)")


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_readme_command(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the README's paths are relative to the repository
    args = arguments(command, tmp_path)
    if args[0] == "ddlight":
        print_config(args[1:])
    else:
        assert args[:2] == ["python", "-m"], command
        run_module_parse_only(args[2], args[3:])
    check_paths(args)
