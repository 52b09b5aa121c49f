"""FRAMI (Kang et al., ICASSP 2023): data-free distillation by feature-rich audio model inversion.

:mod:`~ddlight.distillers.frami.losses` holds the inversion terms, :mod:`~ddlight.distillers.frami.kd` the
students' knowledge distillation (with hidden-state reuse), :mod:`~ddlight.distillers.frami.module` the
:class:`FRAMI` distiller; its conditional generator is :class:`ddlight.networks.generator.FeatureGenerator`.
"""

from ddlight.distillers.frami.module import FRAMI

__all__ = ["FRAMI"]
