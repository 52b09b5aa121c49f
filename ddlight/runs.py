"""Where a run writes: one folder per run, whatever the logger."""

from __future__ import annotations

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
