"""Audio DataModules: official dataset layouts, user folders and procedural sounds."""

from ddlight.data.audio_folder import AudioFolder
from ddlight.data.audio_io import AudioDecodeError, load_audio, read_audio
from ddlight.data.audiomnist import AudioMNIST
from ddlight.data.base import SPLITS, AudioDataModule, WaveformDataset, WaveformSet
from ddlight.data.download import DownloadError, DownloadInfo, download_and_extract
from ddlight.data.esc50 import ESC50
from ddlight.data.files import FileAudioDataModule
from ddlight.data.speech_commands import SpeechCommands
from ddlight.data.synset import SynsetDataModule
from ddlight.data.synthetic import SyntheticSounds
from ddlight.data.urbansound8k import UrbanSound8K

__all__ = [
    "ESC50",
    "SPLITS",
    "AudioDataModule",
    "AudioDecodeError",
    "AudioFolder",
    "AudioMNIST",
    "DownloadError",
    "DownloadInfo",
    "FileAudioDataModule",
    "SpeechCommands",
    "SynsetDataModule",
    "SyntheticSounds",
    "UrbanSound8K",
    "WaveformDataset",
    "WaveformSet",
    "download_and_extract",
    "load_audio",
    "read_audio",
]
