"""The command line shared by the downstream studies (the shape of ``python -m ddlight.evaluation``).

Every argument of a study's ``run`` function becomes an option (typed, documented from its docstring);
``--data`` takes a DataModule YAML (``configs/data/<dataset>.yaml``) or a class path with
``--data.<arg>`` overrides; list options take several words (``--sources synthetic random``); and
``--config`` reads any of them from a YAML file (``configs/<study>_<dataset>.yaml``, where a relative
``data:`` path is resolved next to the file).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser
from matplotlib.figure import Figure

from ddlight.allocator import keep_freed_memory
from ddlight.data.base import AudioDataModule
from ddlight.evaluation.report import write_study


def build_parser(
    run: Callable[..., Any], prog: str, description: str, lists: Mapping[str, str] | None = None
) -> ArgumentParser:
    """The parser of a study command.

    Args:
        run: The study's entry function; it takes ``data`` (an :class:`AudioDataModule`) and typed,
            documented keyword arguments.
        prog: Program name shown by ``--help``.
        description: First line of ``--help``.
        lists: Sequence-valued arguments of ``run`` to take as several words, with their help text;
            their defaults come from ``run``'s signature.

    Returns:
        The parser (``--config``, every argument of ``run``, ``--data``).
    """
    lists = dict(lists or {})
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML file of these options (configs/<study>_<dataset>.yaml)."
    )
    parser.add_function_arguments(run, skip={"data", *lists})
    # a subclass group (not a plain typed argument) so that --data also takes a YAML file
    parser.add_subclass_arguments(AudioDataModule, "data", required=True)
    defaults = inspect.signature(run).parameters
    for name, help_text in lists.items():
        parser.add_argument(f"--{name}", nargs="+", default=list(defaults[name].default), help=help_text)
    return parser


def run_command(run: Callable[..., Any], parser: ArgumentParser, args: Sequence[str] | None = None) -> Any:
    """Parse ``args`` (None: the command line), build the DataModule and call ``run`` with every option."""
    keep_freed_memory()
    init = parser.instantiate(parser.parse_args(None if args is None else list(args)))
    return run(**{name: init[name] for name in inspect.signature(run).parameters})


def publish(
    stem: str, title: str, report: dict[str, Any], text: str, figure: Figure, out: str | None, synset: str
) -> None:
    """Write a study's JSON/Markdown/PNG into ``out`` (default: the folder above the set) and print its tables."""
    paths = write_study(Path(out) if out else Path(synset).resolve().parent, stem, report, text, figure)
    print(text, end="")
    print(f"{title} study written to {', '.join(map(str, paths))}")
