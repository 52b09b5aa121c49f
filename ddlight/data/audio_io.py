"""Decoding one audio file into a fixed-length mono float32 waveform.

:func:`read_audio` decodes a whole file (soundfile/libsndfile: WAV of any PCM width or float, FLAC,
OGG, MP3), averages its channels and resamples it with soxr; :func:`load_audio` then crops (from the
start) or zero-pads it to an exact length. Every way a file can be unusable — missing, empty, no frames,
truncated, corrupt, not audio at all, non-finite samples — raises :class:`AudioDecodeError`, whose
message names the file, the reason and what to do about it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

_REMEDY = "re-download or delete the file, or pass skip_bad_files=True (--data.skip_bad_files true) to skip it"


class AudioDecodeError(ValueError):
    """An audio file cannot be turned into a waveform; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot decode {os.fspath(path)}: {reason}; {_REMEDY}")
        self.path = Path(path)
        self.reason = reason


def _check_wav_length(path: Path) -> None:
    """Raise if a RIFF/WAVE file holds fewer data bytes than its header declares.

    libsndfile silently reads what is there, so a half-downloaded WAV would otherwise load as a
    shorter clip. Streamed WAVs declaring a data size of 0 or 0xFFFFFFFF are accepted.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                available = size - f.tell()
                if chunk_size not in (0, 0xFFFFFFFF) and available < chunk_size:
                    raise AudioDecodeError(
                        path, f"truncated WAV: header declares {chunk_size} data bytes, file holds {available}"
                    )
                return
            f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)


def read_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decode a whole audio file to mono float32 at ``sample_rate`` Hz.

    Args:
        path: Audio file readable by libsndfile.
        sample_rate: Target sampling rate in Hz; the file is resampled (soxr, high quality) if it differs.

    Returns:
        1-D float32 waveform, channels averaged.

    Raises:
        AudioDecodeError: The file is missing, empty, truncated, corrupt, not audio, has no frames or
            holds non-finite samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioDecodeError(path, "empty file (0 bytes)")
    _check_wav_length(path)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioDecodeError(path, f"corrupt or not an audio file ({err})") from err
    if data.shape[0] == 0:
        raise AudioDecodeError(path, "no audio frames")
    wave = data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(wave).all():
        raise AudioDecodeError(path, "non-finite (NaN or infinite) samples")
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate).astype(np.float32, copy=False)
    return wave


def fix_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Crop ``wave`` from the start or zero-pad it at the end to exactly ``num_samples`` samples."""
    if len(wave) >= num_samples:
        return wave[:num_samples]
    return np.pad(wave, (0, num_samples - len(wave)))


def load_audio(path: str | os.PathLike, sample_rate: int, num_samples: int) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform of exactly ``num_samples`` samples at ``sample_rate``.

    Args:
        path: Audio file readable by libsndfile.
        sample_rate: Target sampling rate in Hz.
        num_samples: Output length; longer clips are cropped from the start, shorter ones zero-padded.

    Returns:
        float32 array of shape ``[num_samples]``.

    Raises:
        AudioDecodeError: See :func:`read_audio`.
    """
    return fix_length(read_audio(path, sample_rate), num_samples)
