"""ddlight: dataset distillation of audio with PyTorch Lightning."""

__version__ = "0.1.0"
