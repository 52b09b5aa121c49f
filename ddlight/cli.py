"""The ``ddlight`` command: a LightningCLI over every ddlight DataModule and LightningModule.

    ddlight fit --config configs/expert_synthetic.yaml
    ddlight fit --config configs/mtt_us8k.yaml --data.root /data/UrbanSound8K

The DataModule's ``num_classes`` and ``feature_shape`` are linked into the model's ``num_classes`` and
``in_shape``, so no config hard-codes them. After ``fit`` the test split is evaluated
(``--test_after_fit false`` turns that off).
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI


class DDLightCLI(LightningCLI):
    """LightningCLI in subclass mode with ddlight's argument links and a test pass after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.feature_shape", "model.init_args.in_shape", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="Run the test split after fit."
        )

    def after_fit(self) -> None:
        """Evaluate on the test split once training is done (the accuracy every run reports)."""
        if self.config[self.subcommand].get("test_after_fit") and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)


def main(args: ArgsType = None) -> None:
    """Entry point of the ``ddlight`` command (``args`` lets tests call it in-process)."""
    DDLightCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )
