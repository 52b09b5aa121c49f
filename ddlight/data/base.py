"""The base of every ddlight DataModule: fixed-length waveforms in memory, features on the device.

A DataModule holds each split as a :class:`WaveformSet` (``[N, L]`` float32 waveforms, possibly a
memory-mapped cache, and integer labels). The nnAudio front end turns waveforms into normalised features
on the device. By default (``cache_features``) it does so once per split, on the trainer's device, and
the loaders then serve those features: the front end is deterministic, and recomputing the STFT of
every clip in every epoch cost about 40 % of an expert's training time on a CPU (BENCHMARKS.md,
"Feature cache"). Without the cache, batches of *waveforms* travel to the device and become features
there, in :meth:`AudioDataModule.on_after_batch_transfer`. ``num_classes`` and ``feature_shape`` are
known right after ``__init__`` so that LightningCLI can link them into the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ddlight.allocator import physical_memory
from ddlight.features import AudioFeatures, FeatureConfig

SPLITS = ("train", "val", "test")


@dataclass
class WaveformSet:
    """One split: waveforms ``[N, L]`` (float32, array or memmap) and labels ``[N]`` (int64)."""

    waves: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.waves) != len(self.labels):
            raise ValueError(f"{len(self.waves)} waveforms but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


class WaveformDataset(Dataset):
    """Map-style dataset over a :class:`WaveformSet` returning ``(waveform [L], label)``."""

    def __init__(self, data: WaveformSet) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        wave = torch.from_numpy(np.array(self.data.waves[index], dtype=np.float32))
        return wave, torch.tensor(int(self.data.labels[index]), dtype=torch.long)


class CachedFeatureDataset(Dataset):
    """Map-style dataset over a split's cached features returning ``(features [C, F, T], label)``.

    The cache is filled on the first item asked for, not when the loader is built: a distiller's training
    loader only counts its steps and never reads an item.

    Args:
        data: The DataModule whose :meth:`AudioDataModule.cached_features` serves the split.
        split: ``train``, ``val`` or ``test``.
    """

    def __init__(self, data: AudioDataModule, split: str) -> None:
        self.data = data
        self.split = split
        self.labels = data.split_labels(split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.data.cached_features(self.split)[index], self.labels[index]


class IndependentOrders(Sampler[list[int]]):
    """Batches that put side by side ``orders`` independent shuffles of one dataset.

    Step ``i`` yields the ``i``-th minibatch of each of ``orders`` permutations, concatenated (``orders``
    equal chunks), so ``orders`` networks trained side by side each see the data in their own order
    (MTT's experts: own initialisation *and* own batch order). The permutations are drawn from torch's
    global generator at the start of every epoch, as a shuffling DataLoader does, so
    ``seed_everything`` makes them reproducible.

    Args:
        size: Number of samples.
        batch_size: Minibatch size of each order.
        orders: Number of independent orders.
    """

    def __init__(self, size: int, batch_size: int, orders: int) -> None:
        if size < 1 or batch_size < 1 or orders < 1:
            raise ValueError(f"size, batch_size and orders must be >= 1, got {size}, {batch_size}, {orders}")
        self.size, self.batch_size, self.orders = size, batch_size, orders

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_()))
        permutations = [torch.randperm(self.size, generator=generator) for _ in range(self.orders)]
        for start in range(0, self.size, self.batch_size):
            yield torch.cat([p[start : start + self.batch_size] for p in permutations]).tolist()

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)


class AudioDataModule(L.LightningDataModule, ABC):
    """Fixed-length mono audio at one sample rate, with an on-device feature front end.

    Subclasses set :attr:`classes` in ``__init__`` and implement :meth:`load_splits`.

    Args:
        sample_rate: Target sampling rate in Hz; every clip is resampled to it.
        duration: Clip length in seconds; clips are cropped or zero-padded to it.
        features: Feature front end applied on the device.
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes for splits served as waveforms (a cached split needs none).
        seed: Seed of anything random in loading (splits of user data, procedural sounds).
        cache_features: Compute each split's features once (on the trainer's device, kept in CPU memory:
            a fraction of the waveforms' size) and serve them in every epoch and every
            :meth:`split_features` call. Off, and for a split whose cache would pass half the memory
            the run may use (with a warning): the front end runs on every batch.
    """

    #: Short dataset name, used for default output folders such as ``experts/<name>/``.
    name: str = "audio"
    #: Class names, index = label.
    classes: list[str]

    def __init__(
        self,
        sample_rate: int = 16000,
        duration: float = 1.0,
        features: FeatureConfig | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache_features: bool = True,
    ) -> None:
        super().__init__()
        if sample_rate <= 0 or duration <= 0:
            raise ValueError(f"sample_rate and duration must be positive, got {sample_rate}, {duration}")
        self.sample_rate = sample_rate
        self.duration = duration
        self.feature_config = features or FeatureConfig()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.cache_features = cache_features
        #: Features ``[N, C, F, T]`` per split on the CPU, filled on first use (:meth:`cached_features`).
        self._cache: dict[str, Tensor] = {}
        self._too_large: set[str] = set()  # splits warned about: too large to cache
        self.features: AudioFeatures = self.feature_config.build(sample_rate)
        self.splits: dict[str, WaveformSet] = {}
        #: Independent shuffles per training batch (see :class:`IndependentOrders`); set by a model that
        #: trains several networks side by side, e.g. :class:`~ddlight.tasks.Classifier`.
        self.train_orders = 1

    # ----------------------------------------------------------------------------------------- shape
    @property
    def num_samples(self) -> int:
        """Clip length in samples."""
        return int(round(self.sample_rate * self.duration))

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, F, T)`` of the features of one clip."""
        return self.features.output_shape(self.num_samples)

    # --------------------------------------------------------------------------------------- loading
    @abstractmethod
    def load_splits(self) -> dict[str, WaveformSet]:
        """Return the ``train``, ``val`` and ``test`` splits (subclasses implement this)."""

    @property
    def show_progress(self) -> bool:
        """Whether loading shows progress bars: yes, unless a trainer runs without its progress bar."""
        return self.trainer is None or self.trainer.progress_bar_callback is not None

    def setup(self, stage: str | None = None) -> None:
        """Load the splits once and fit the feature normalisation on the training split."""
        if not self.splits:
            splits = self.load_splits()
            missing = [s for s in SPLITS if s not in splits]
            if missing:
                raise ValueError(f"{type(self).__name__}.load_splits() returned no {missing} split")
            self.splits = splits
        if not bool(self.features.fitted):
            train = self.splits["train"]
            batches = (
                torch.from_numpy(np.array(train.waves[i : i + 256], dtype=np.float32))
                for i in range(0, len(train), 256)
            )
            total = math.ceil(len(train) / 256)
            self.features.fit_normalization(batches, total=total, show_progress=self.show_progress)

    def dataset(self, split: str) -> Dataset:
        """Dataset of ``split``: its cached features (``cache_features``) or its waveforms.

        Raises:
            RuntimeError: If ``setup()`` has not loaded the split.
        """
        self._check_loaded(split)
        if self._cached(split):
            return CachedFeatureDataset(self, split)
        return WaveformDataset(self.splits[split])

    def _loader(self, split: str, shuffle: bool, orders: int = 1) -> DataLoader:
        """Loader of ``split``; ``orders > 1`` batches independent shuffles side by side.

        A cached split is served without worker processes: its items are slices of one tensor in memory,
        which workers would only copy (and each would fill a cache of its own).
        """
        dataset = self.dataset(split)
        batching = (
            {"batch_sampler": IndependentOrders(len(dataset), self.batch_size, orders)}
            if orders > 1
            else {"batch_size": self.batch_size, "shuffle": shuffle}
        )
        workers = 0 if isinstance(dataset, CachedFeatureDataset) else self.num_workers
        return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0, **batching)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, orders=self.train_orders)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # -------------------------------------------------------------------------------------- features
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turn a waveform batch ``[B, L]`` into normalised features on its device; features pass through."""
        inputs, labels = batch
        if inputs.dim() != 2:  # already features (``cache_features``)
            return batch
        self.features.to(inputs.device)
        with torch.no_grad():
            return self.features(inputs), labels

    def split_features(
        self, split: str, device: torch.device | str = "cpu", batch_size: int = 256
    ) -> tuple[Tensor, Tensor]:
        """Normalised features ``[N, C, F, T]`` and labels ``[N]`` of a whole split, on ``device``.

        Served from the cache with ``cache_features`` (filled on ``device`` unless a trainer gives its
        own; on the CPU the cache itself is returned: do not modify it in place); otherwise computed on
        ``device`` in chunks of ``batch_size`` clips.

        Raises:
            RuntimeError: If ``setup()`` has not loaded the split.
        """
        self._check_loaded(split)
        if self._cached(split):
            features = self.cached_features(split, device)
        else:
            features = self._extract(split, device, device, batch_size)
        return features.to(device), self.split_labels(split).to(device)

    def cached_features(self, split: str, device: torch.device | str = "cpu") -> Tensor:
        """The features of ``split`` on the CPU, computed on the first call.

        They are computed on the trainer's device when a trainer is attached, else on ``device``.
        """
        self._check_loaded(split)
        if split not in self._cache:
            if self.trainer is not None:
                device = self.trainer.strategy.root_device
            self._cache[split] = self._extract(split, device, "cpu", progress=self.show_progress)
        return self._cache[split]

    def split_labels(self, split: str) -> Tensor:
        """Labels ``[N]`` of ``split`` (int64, CPU)."""
        self._check_loaded(split)
        return torch.as_tensor(np.asarray(self.splits[split].labels), dtype=torch.long)

    def _extract(
        self,
        split: str,
        device: torch.device | str,
        out: torch.device | str,
        batch_size: int = 256,
        progress: bool = False,
    ) -> Tensor:
        """Run the front end over every clip of ``split`` on ``device``, ``batch_size`` clips at a time.

        Each chunk moves to ``out`` as it is made (the split is never held twice on ``device``). Also
        under ``trainer.test``'s inference mode the result is an ordinary tensor: the cache made there
        is later trained on (an evaluation's networks, a distiller's real features).
        """
        data = self.splits[split]
        starts = range(0, len(data), batch_size)
        with torch.inference_mode(False), torch.no_grad():
            self.features.to(device)
            chunks = [
                self.features(torch.from_numpy(np.array(data.waves[i : i + batch_size], np.float32)).to(device)).to(out)
                for i in tqdm(starts, desc=f"features ({split})", unit="batch", leave=False, disable=not progress)
            ]
            return torch.cat(chunks)

    def _cached(self, split: str) -> bool:
        """Whether ``split`` is served from the cache: ``cache_features`` and the cache stays within budget.

        The budget is half of the memory this process may use (:func:`~ddlight.allocator.physical_memory`:
        the machine's, or its container's limit), shared by every split and by the processes of a
        multi-device run on this machine. A split that would exceed it is computed per batch instead,
        with a warning (once per split), rather than filling the memory.
        """
        if not self.cache_features or split in self._cache:
            return self.cache_features
        memory = physical_memory()
        if memory is None:
            return True
        per_sample = math.prod(self.feature_shape) * 4
        cached = sum(t.numel() * t.element_size() for t in self._cache.values())
        needed = len(self.splits[split]) * per_sample
        processes = self.trainer.num_devices if self.trainer is not None else 1
        if (cached + needed) * processes <= memory // 2:
            return True
        if split not in self._too_large:
            self._too_large.add(split)
            warnings.warn(
                f"caching the {split} split's features would hold {(cached + needed) * processes / 2**30:,.1f} GiB "
                f"({processes} process(es)), more than half of the {memory / 2**30:,.1f} GiB of memory this run "
                "may use: computing them per batch instead (--data.init_args.cache_features false says so and "
                "silences this)",
                stacklevel=2,
            )
        return False

    def _check_loaded(self, split: str) -> None:
        if split not in self.splits:
            raise RuntimeError(f"split {split!r} is not loaded; call setup() first")

    # ------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The fitted normalisation statistics travel with checkpoints."""
        return {"features": self.features.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.features.load_state_dict(state_dict["features"])
        self._cache.clear()  # computed with the statistics just replaced

    def fingerprint(self) -> str:
        """Short hash identifying the exact data (subclasses with files hash their file lists)."""
        digest = hashlib.sha1(repr((self.name, self.classes, self.sample_rate, self.duration)).encode())
        for split in SPLITS:
            if split in self.splits:
                digest.update(np.ascontiguousarray(self.splits[split].labels).tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """Metadata for manifests: dataset, classes, audio and feature configuration."""
        return {
            "dataset": self.name,
            "classes": list(self.classes),
            "sample_rate": self.sample_rate,
            "duration": self.duration,
            "features": self.features.config(),
            "feature_shape": list(self.feature_shape),
            "fingerprint": self.fingerprint(),
        }
