"""Lightning callbacks of ddlight (their YAML specs live in the top-level ``callbacks/`` folder)."""

from ddlight.callbacks.audio_reconstruction import AudioReconstruction
from ddlight.callbacks.trajectory import TrajectoryRecorder

__all__ = ["AudioReconstruction", "TrajectoryRecorder"]
