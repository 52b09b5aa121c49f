"""Tiny datasets in each official layout, written into temporary folders.

Clips are short (0.25 s) tones and noise at low sample rates, so a whole dataset decodes in well under
a second; the DataModules are built with the ``small`` arguments (8 kHz, 0.5 s, a small front end).
Helpers reach the tests as fixtures (``small``, ``wav``) because ``conftest`` is not importable by name
when several test folders have one.
"""

from __future__ import annotations

import csv
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ddlight.allocator import keep_freed_memory
from ddlight.features import FeatureConfig

keep_freed_memory()  # the suite's process allocates as the ddlight commands do


GSC_KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
GSC_OTHERS = ["bed", "cat"]


def tone(seconds: float = 0.25, sample_rate: int = 8000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine (plus a little noise) of ``channels`` channels, shape ``[frames]`` or ``[frames, channels]``."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(int(freq))
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    if channels == 1:
        return wave.astype(np.float32)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def write_wav(path: Path, freq: float = 440.0, sample_rate: int = 8000, seconds: float = 0.25, **kwargs) -> Path:
    """Write a short tone to ``path`` (parents created); ``kwargs`` go to :func:`soundfile.write`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = kwargs.pop("channels", 1)
    sf.write(path, tone(seconds, sample_rate, freq, channels), sample_rate, **kwargs)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def small() -> dict:
    """DataModule arguments that keep every test small and fast."""
    return {
        "sample_rate": 8000,
        "duration": 0.5,
        "batch_size": 4,
        "features": FeatureConfig(n_fft=256, hop_length=128, n_mels=20, n_mfcc=10),
    }


@pytest.fixture
def wav() -> Callable[..., Path]:
    """The :func:`write_wav` helper."""
    return write_wav


@pytest.fixture
def gsc_root(tmp_path: Path) -> Path:
    """Speech Commands v0.02 layout: 4 clips per word (2 train, 1 val, 1 test) and 2 noise files."""
    root = tmp_path / "speech_commands"
    val, test = [], []
    for w, word in enumerate(GSC_KEYWORDS + GSC_OTHERS):
        for n in range(4):
            name = f"{word}/spk{n:02d}_nohash_0.wav"
            write_wav(root / name, freq=200 + 50 * w + 10 * n)
            (val if n == 2 else test if n == 3 else []).append(name)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    for i in range(2):
        write_wav(root / "_background_noise_" / f"noise{i}.wav", freq=90 + i, seconds=2.0)
    (root / "LICENSE").write_text("CC BY 4.0\n")
    return root


@pytest.fixture
def us8k_root(tmp_path: Path) -> Path:
    """UrbanSound8K layout: two clips per fold (classes f and f+1), in mixed rates and formats."""
    root = tmp_path / "UrbanSound8K"
    classes = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling"]
    classes += ["engine_idling", "gun_shot", "jackhammer", "siren", "street_music"]
    formats = [{}, {"channels": 2}, {"sample_rate": 44100}, {"subtype": "PCM_U8"}, {"subtype": "FLOAT"}]
    rows = []
    for fold in range(1, 11):
        for k in range(2):
            label = (fold + k) % 10
            name = f"{100 + fold}-{label}-0-{k}.wav"
            write_wav(root / "audio" / f"fold{fold}" / name, freq=300 + 40 * label, **formats[(fold + k) % 5])
            rows.append([name, 100 + fold, 0.0, 0.25, 1, fold, label, classes[label]])
    header = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    write_csv(root / "metadata" / "UrbanSound8K.csv", header, rows)
    return root


ESC50_TARGETS = {0: "dog", 1: "rooster", 2: "pig", 10: "rain"}


@pytest.fixture
def esc50_root(tmp_path: Path) -> Path:
    """ESC-50 layout: one 44.1 kHz clip per fold for four classes (three of them in ESC-10)."""
    root = tmp_path / "ESC-50-master"
    rows = []
    for fold in range(1, 6):
        for target, category in ESC50_TARGETS.items():
            name = f"{fold}-{1000 + target}-A-{target}.wav"
            write_wav(root / "audio" / name, freq=250 + 30 * target, sample_rate=44100)
            rows.append([name, fold, target, category, target != 2, f"{1000 + target}.ogg", "A"])
    header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    write_csv(root / "meta" / "esc50.csv", header, rows)
    return root


AUDIOMNIST_SPEAKERS = ["01", "02", "03", "04", "05"]  # one per official speaker group: 3 train, 1 val, 1 test
AUDIOMNIST_DIGITS = [0, 3, 7, 9]


@pytest.fixture
def audiomnist_root(tmp_path: Path) -> Path:
    """AudioMNIST layout: five speakers (one per official group) × four digits × two repetitions, 48 kHz.

    Clip ``<digit>_<speaker>_<index>.wav`` lasts ``0.2 + 0.05 * index`` s (0.2 or 0.25 s).
    """
    root = tmp_path / "AudioMNIST-master"
    meta = {}
    for s, speaker in enumerate(AUDIOMNIST_SPEAKERS):
        meta[speaker] = {"accent": "German", "age": 20 + s, "gender": ["male", "female"][s % 2]}
        for digit in AUDIOMNIST_DIGITS:
            for index in range(2):
                path = root / "data" / speaker / f"{digit}_{speaker}_{index}.wav"
                freq = 200 + 60 * digit + 10 * s
                write_wav(path, freq=freq, sample_rate=48000, seconds=0.2 + 0.05 * index, subtype="PCM_16")
    (root / "data" / "audioMNIST_meta.txt").write_text(json.dumps(meta, indent=4))
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """User audio folder: three classes of ten clips each, in WAV, FLAC and OGG."""
    root = tmp_path / "My Sounds"
    for c, name in enumerate(["birds", "cars", "rain"]):
        for i in range(10):
            write_wav(root / name / f"clip{i}.{['wav', 'flac', 'ogg'][i % 3]}", freq=300 + 200 * c + 7 * i)
    return root


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 (a random free port) for the test's duration."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own temporary folder, so nothing lands in the checkout (run dirs, experts)."""
    monkeypatch.chdir(tmp_path)
