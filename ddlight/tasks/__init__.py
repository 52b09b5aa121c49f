"""LightningModules that train networks on real data."""

from ddlight.tasks.classifier import Classifier

__all__ = ["Classifier"]
