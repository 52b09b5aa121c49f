"""Where a run writes: one folder per run, whatever the logger."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


def run_dir(trainer: L.Trainer) -> Path:
    """The folder of this run, on every rank (the same on all: it is broadcast from rank 0).

    CSV and TensorBoard runs use the logger's ``log_dir`` (``<save_dir>/<name>/version_N``). Other loggers
    get ``<save_dir>/<name>/<version>`` (for W&B: ``runs/<project>/<run id>``), the folder Lightning's
    ``ModelCheckpoint`` already uses for them, where ``trainer.log_dir`` would be the ``save_dir`` that all
    runs share. Without a logger: ``default_root_dir``. Must be called on every rank under DDP.
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None or isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return Path(trainer.log_dir or trainer.default_root_dir)
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    path = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version
    return Path(trainer.strategy.broadcast(str(path)))


def check_writable(directory: Path, what: str, remedy: str) -> None:
    """Create ``directory`` if needed and write a scratch file in it, or fail with a message naming both.

    Args:
        directory: The folder a run is about to write.
        what: What goes there (for the message), e.g. ``"the run folder"``.
        remedy: What to do instead, e.g. the flag that moves the folder.

    Raises:
        OSError: If the folder cannot be created or written (a file in its path, no permission, a
            read-only file system).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise OSError(f"cannot write {what} {directory}: {err.strerror or err}; {remedy}") from err


def check_logger_folders(trainer: L.Trainer) -> None:
    """:func:`check_writable` on every logger's ``save_dir`` (the default root folder without a logger)."""
    roots = [logger.save_dir for logger in trainer.loggers if logger.save_dir] or [trainer.default_root_dir]
    for root in roots:
        check_writable(Path(root), "the run folder under", "point --trainer.logger.init_args.save_dir (or "
                       "--trainer.default_root_dir without a logger) at a writable folder")
