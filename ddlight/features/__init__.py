"""On-device audio feature front ends (nnAudio kernels), each invertible back to a waveform."""

from ddlight.features.base import AudioFeatures
from ddlight.features.config import FEATURES, FeatureConfig, build_features
from ddlight.features.fdmfcc import FDMFCC, delta
from ddlight.features.mel import MFCC, LogMel, dct_matrix

__all__ = [
    "FEATURES",
    "FDMFCC",
    "MFCC",
    "AudioFeatures",
    "FeatureConfig",
    "LogMel",
    "build_features",
    "dct_matrix",
    "delta",
]
