"""LightningModules that train networks on real data, and the optimiser wrapper of flat experts."""

from ddlight.tasks.classifier import Classifier
from ddlight.tasks.sam import SAM

__all__ = ["SAM", "Classifier"]
