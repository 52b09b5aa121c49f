"""The one way to train and score a fresh network on tensors.

:class:`TrainRecipe` says how (SGD, learning-rate schedule, batch size, augmentation, seed); :func:`fit_networks`
trains ``repeats`` networks with it (stacked under ``vmap`` or one by one); :func:`accuracy`,
:func:`embed` and :func:`summarize` measure them; :func:`kcenter_greedy` picks a core set in an
embedding space; :func:`final_expert_networks` rebuilds recorded experts. The evaluation protocol, the
active-learning baselines, FRAMI's students and the reconstruction check all use these, so their
numbers are comparable. This package sits just above :mod:`ddlight.networks` and :mod:`ddlight.augment`.
"""

from ddlight.recipe.config import TrainRecipe
from ddlight.recipe.experts import build_expert_network, final_expert_networks
from ddlight.recipe.kcenter import kcenter_greedy
from ddlight.recipe.scores import accuracy, embed, summarize
from ddlight.recipe.training import NetworkBuilder, Progress, fit_network, fit_networks, soft_cross_entropy

__all__ = [
    "NetworkBuilder",
    "Progress",
    "TrainRecipe",
    "accuracy",
    "build_expert_network",
    "embed",
    "final_expert_networks",
    "fit_network",
    "fit_networks",
    "kcenter_greedy",
    "soft_cross_entropy",
    "summarize",
]
