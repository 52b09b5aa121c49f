"""Lightning callbacks of ddlight (their YAML specs live in the top-level ``callbacks/`` folder)."""

from ddlight.callbacks.audio_reconstruction import AudioReconstruction
from ddlight.callbacks.interruption import SaveOnInterrupt
from ddlight.callbacks.network_export import NetworkExport
from ddlight.callbacks.progress import StepProgressBar
from ddlight.callbacks.student_evaluator import StudentEvaluator
from ddlight.callbacks.synset_evaluator import SynsetEvaluator
from ddlight.callbacks.trajectory import TrajectoryRecorder

__all__ = ["AudioReconstruction", "NetworkExport", "SaveOnInterrupt", "StepProgressBar", "StudentEvaluator", "SynsetEvaluator", "TrajectoryRecorder"]
