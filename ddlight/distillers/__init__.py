"""Dataset distillers: LightningModules whose trainable state is the synthetic set."""

from ddlight.distillers.base import Distiller
from ddlight.distillers.dc import DC
from ddlight.distillers.dm import DM
from ddlight.distillers.frami import FRAMI
from ddlight.distillers.mtt import MTT
from ddlight.distillers.rfad import RFAD

__all__ = ["DC", "DM", "FRAMI", "MTT", "RFAD", "Distiller"]
