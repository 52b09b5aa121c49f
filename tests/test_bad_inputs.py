"""A catalogue of bad inputs and what ddlight says about them.

Each case feeds one broken input to the code that reads it and asserts that the error (or, where ddlight
repairs what it owns, the warning) names the file or value and says what to do, and, where something was
already written, that nothing already written is lost or corrupted. The README's table "Bad inputs and
what ddlight says" summarises these cases.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import re
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ddlight.data.files as files_module
from ddlight.active_learning.compare import main as compare_main
from ddlight.cli import main as cli_main
from ddlight.data import ESC50, AudioDecodeError, AudioFolder, AudioMNIST, SpeechCommands, UrbanSound8K
from ddlight.data.download import ArchiveError, DownloadError, DownloadInfo, download_and_extract, partial_path
from ddlight.data.files import FileAudioDataModule
from ddlight.data.synset import SynsetDataModule
from ddlight.distillers.mtt import MTT
from ddlight.distillers.rfad import RFAD
from ddlight.io import (
    MANIFEST, SYNSET_FILE, Synset, load_synset, load_trajectories, save_json, save_synset, save_tensors,
)
from ddlight.networks import build_network

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what must survive a refused input unchanged."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _relative_lists(dm: FileAudioDataModule) -> dict[str, list[tuple[str, int]]]:
    lists = dm.file_lists()
    return {split: [(p.relative_to(dm.root).as_posix(), y) for p, y in files] for split, files in lists.items()}


# ----------------------------------------------------------------------------------- metadata CSVs
METADATA = {"us8k": (UrbanSound8K, "metadata/UrbanSound8K.csv"), "esc50": (ESC50, "meta/esc50.csv")}

Rows = list[dict[str, str]]


def _edit_csv(path: Path, edit: Callable[[Rows], Rows], drop_column: str | None = None) -> None:
    """Rewrite a metadata CSV through ``edit`` on its rows (optionally without one column)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = [c for c in reader.fieldnames if c != drop_column], edit(list(reader))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _set(column: str, value: str) -> Callable[[Rows], Rows]:
    """An edit that sets ``column`` of the first row (CSV line 2) to ``value``."""
    return lambda rows: [{**rows[0], column: value}, *rows[1:]]


def _duplicate_first(rows: Rows) -> Rows:
    return [*rows, rows[0]]


@pytest.mark.parametrize("dataset", ["us8k", "esc50"])
def test_metadata_with_a_utf8_bom_is_read(request: pytest.FixtureRequest, small: dict, dataset: str) -> None:
    cls, metadata = METADATA[dataset]
    root = request.getfixturevalue(f"{dataset}_root")
    expected = _relative_lists(cls(str(root), **small))
    (root / metadata).write_bytes(b"\xef\xbb\xbf" + (root / metadata).read_bytes())
    assert _relative_lists(cls(str(root), **small)) == expected


@pytest.mark.parametrize(
    ("dataset", "edit", "pattern"),
    [
        ("us8k", _set("fold", "one"), r"UrbanSound8K\.csv, line 2: fold is 'one', not an integer; fix that line"),
        ("us8k", _set("classID", ""), r"UrbanSound8K\.csv, line 2: classID is '', not an integer; fix that line"),
        ("esc50", _set("fold", "4.0"), r"esc50\.csv, line 2: fold is '4\.0', not an integer; fix that line"),
        ("esc50", _set("target", "dog"), r"esc50\.csv, line 2: target is 'dog', not an integer; fix that line"),
        ("us8k", _duplicate_first, r"line 22: 101-1-0-0\.wav is listed again \(first on line 2\); remove the dup"),
        ("esc50", _duplicate_first, r"line 22: 1-1000-A-0\.wav is listed again \(first on line 2\); remove the dup"),
        ("us8k", _set("fold", "11"), r"line 2: unexpected row 101-1-0-0\.wav \(fold 11.*fix that line"),
        ("us8k", _set("class", "siren"), r"line 2: unexpected row 101-1-0-0\.wav .*'siren'.*fix that line"),
        ("us8k", lambda rows: [], r"no file of .*UrbanSound8K falls into the train and val and test split; check"),
    ],
    ids=["us8k-fold-word", "us8k-empty-label", "esc50-fold-float", "esc50-target-word", "us8k-duplicate",
         "esc50-duplicate", "us8k-fold-out-of-range", "us8k-wrong-class", "us8k-header-only"],
)
def test_bad_metadata_rows_name_file_line_and_fix(
    request: pytest.FixtureRequest, small: dict, dataset: str, edit: Callable[[Rows], Rows], pattern: str
) -> None:
    cls, metadata = METADATA[dataset]
    root = request.getfixturevalue(f"{dataset}_root")
    _edit_csv(root / metadata, edit)
    before = _files(root)
    with pytest.raises(ValueError, match=pattern):
        cls(str(root), **small).setup()
    assert _files(root) == before  # no cache, nothing else written


def test_metadata_without_a_required_column(us8k_root: Path, small: dict) -> None:
    _edit_csv(us8k_root / METADATA["us8k"][1], lambda rows: rows, drop_column="fold")
    pattern = r"UrbanSound8K\.csv lacks the columns \['fold'\]; expected at least .*download the metadata again"
    with pytest.raises(ValueError, match=pattern):
        UrbanSound8K(str(us8k_root), **small).setup()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"test_fold": 11}, r"test_fold=11 is not a fold of this dataset; choose from \[1, 2,"),
        ({"test_fold": 3, "val_fold": 3}, r"val_fold and test_fold must differ, both are 3; choose another val_fold"),
    ],
)
def test_impossible_folds(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        UrbanSound8K(str(tmp_path), **kwargs)


def test_missing_dataset_root_names_layout_and_download(tmp_path: Path, small: dict) -> None:
    pattern = r"nothing does not hold UrbanSound8K; expected the layout .*--data.download true"
    with pytest.raises(FileNotFoundError, match=pattern):
        UrbanSound8K(str(tmp_path / "nothing"), **small).setup()


# ------------------------------------------------------------------------------ Speech Commands lists
def _rewrite_lists(root: Path, line: Callable[[str], str]) -> None:
    for name in ("validation_list.txt", "testing_list.txt"):
        path = root / name
        path.write_text("".join(line(entry) for entry in path.read_text().split()))


@pytest.mark.parametrize(
    "line", [lambda e: f"./{e}\n", lambda e: f"{e.replace('/', chr(92))}\r\n"], ids=["dot-slash", "windows"]
)
def test_gsc_lists_with_prefixes_or_windows_separators_keep_the_official_split(
    gsc_root: Path, small: dict, line: Callable[[str], str]
) -> None:
    expected = _relative_lists(SpeechCommands(str(gsc_root), **small))
    _rewrite_lists(gsc_root, line)
    lists = _relative_lists(SpeechCommands(str(gsc_root), **small))
    assert lists == expected and len(lists["val"]) == len(lists["test"]) == 10


def test_gsc_list_entries_naming_no_file_are_refused(gsc_root: Path, small: dict) -> None:
    _rewrite_lists(gsc_root, lambda e: f"/{e}\n")  # absolute: would silently train on everything
    pattern = r"testing_list\.txt: 12 of 12 entries name no file .*'/bed/spk03_nohash_0\.wav'.*<word>/<file>\.wav "
    with pytest.raises(ValueError, match=pattern + r"relative to root.*fix the list or restore the files"):
        SpeechCommands(str(gsc_root), **small).setup()


def test_gsc_missing_listed_file_is_refused_or_skipped(gsc_root: Path, small: dict) -> None:
    (gsc_root / "yes" / "spk03_nohash_0.wav").unlink()
    pattern = r"testing_list\.txt: 1 of 12 entries .*'yes/spk03_nohash_0\.wav'.*skip_bad_files=True to ignore them"
    with pytest.raises(ValueError, match=pattern):
        SpeechCommands(str(gsc_root), **small).file_lists()
    with pytest.warns(UserWarning, match=r"testing_list\.txt: 1 of 12 .*ignoring them"):
        lists = SpeechCommands(str(gsc_root), skip_bad_files=True, **small).file_lists()
    assert len(lists["test"]) == 9


def test_gsc_file_in_both_lists(gsc_root: Path, small: dict) -> None:
    with (gsc_root / "testing_list.txt").open("a") as f:
        f.write("yes/spk02_nohash_0.wav\n")
    pattern = r"\['yes/spk02_nohash_0\.wav'\] are in both validation_list\.txt and testing_list\.txt.*remove them"
    with pytest.raises(ValueError, match=pattern):
        SpeechCommands(str(gsc_root), **small).file_lists()


# ------------------------------------------------------------------------------ AudioMNIST, folders
def test_audiomnist_misnamed_file(audiomnist_root: Path, small: dict, wav: Callable[..., Path]) -> None:
    wav(audiomnist_root / "data" / "02" / "seven.wav", sample_rate=48000)
    pattern = r"seven\.wav: file name is not <digit>_<speaker>_<index>\.wav.*fix or remove it.*skip_bad_files=True"
    with pytest.raises(ValueError, match=pattern):
        AudioMNIST(str(audiomnist_root), **small).file_lists()


def test_audiomnist_without_the_recordings_of_a_split(audiomnist_root: Path, small: dict) -> None:
    for path in (audiomnist_root / "data" / "05").iterdir():
        path.unlink()
    pattern = r"holds no recordings of the \['test'\] speakers of split 0 .*is the download complete"
    with pytest.raises(ValueError, match=pattern):
        AudioMNIST(str(audiomnist_root), **small).file_lists()


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{", r"ddlight_split\.json is not valid JSON .*delete or regenerate it"),
        ('{"classes": ["a"]}', r"ddlight_split\.json is not a ddlight split record .*delete it to draw a new split"),
        ("[1, 2]", r"ddlight_split\.json is not a ddlight split record .*delete it to draw a new split"),
    ],
    ids=["not-json", "missing-keys", "a-list"],
)
def test_audio_folder_damaged_split_file_is_kept(folder_root: Path, small: dict, content: str, pattern: str) -> None:
    (folder_root / "ddlight_split.json").write_text(content)
    with pytest.raises(ValueError, match=pattern):
        AudioFolder(str(folder_root), **small).file_lists()
    assert (folder_root / "ddlight_split.json").read_text() == content  # not redrawn over the user's file


def test_audio_folder_split_lists_a_deleted_file(folder_root: Path, small: dict) -> None:
    AudioFolder(str(folder_root), **small).file_lists()
    (folder_root / "cars" / "clip4.flac").unlink()
    with pytest.raises(AudioDecodeError, match=r"clip4\.flac: file not found .*skip_bad_files=True"):
        AudioFolder(str(folder_root), **small).setup()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[: len(b) // 2], r"truncated WAV: header declares \d+ data bytes, file holds \d+"),
        (lambda b: b"not audio at all", r"corrupt or not an audio file"),
        (lambda b: b"", r"empty file \(0 bytes\)"),
    ],
    ids=["truncated", "not-audio", "empty"],
)
def test_undecodable_audio_names_file_and_remedy(us8k_root: Path, small: dict, damage: Callable, reason: str) -> None:
    bad = us8k_root / "audio" / "fold3" / "103-3-0-0.wav"
    bad.write_bytes(damage(bad.read_bytes()))
    pattern = rf"cannot decode .*103-3-0-0\.wav: {reason}.*; re-download or delete the file, or pass skip_bad_files"
    with pytest.raises(AudioDecodeError, match=pattern):
        UrbanSound8K(str(us8k_root), **small).setup()
    assert not any((us8k_root / ".ddlight_cache").iterdir())  # no half-written cache


# ------------------------------------------------------------------------------------ feature cache
def _refuse_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(files_module, "load_audio", refuse)


def test_cache_built_with_skipped_files_is_not_reused_silently(
    us8k_root: Path, small: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = us8k_root / "audio" / "fold3" / "103-3-0-0.wav"
    bad.write_text("not audio")
    with pytest.warns(UserWarning, match=re.escape(str(bad))):
        UrbanSound8K(str(us8k_root), skip_bad_files=True, **small).setup()
    cache = _files(us8k_root / ".ddlight_cache")
    pattern = rf"{re.escape(str(bad))}: corrupt or not an audio file.*skip_bad_files=True"
    with pytest.raises(AudioDecodeError, match=pattern):
        UrbanSound8K(str(us8k_root), **small).setup()  # strict run: decodes again instead of reusing
    assert _files(us8k_root / ".ddlight_cache") == cache
    _refuse_decoding(monkeypatch)
    with pytest.warns(UserWarning, match=rf"skipping {re.escape(str(bad))}: corrupt .*as when the cache was built"):
        dm = UrbanSound8K(str(us8k_root), skip_bad_files=True, **small)
        dm.setup()
    assert len(dm.splits["train"]) == 15


@pytest.mark.parametrize(
    ("suffix", "damage", "named"),
    [
        (".npy", lambda b: b[: len(b) // 2], ".npy"),
        (".labels.npy", lambda b: b"garbage", ".labels.npy"),
        (".json", lambda b: b"{", ".json"),
        (".json", lambda b: b'{"rows": 3, "skipped": []}', ".npy"),
    ],
    ids=["truncated-waves", "garbage-labels", "broken-record", "wrong-row-count"],
)
def test_damaged_cache_file_is_named_and_rebuilt(
    folder_root: Path, small: dict, suffix: str, damage: Callable[[bytes], bytes], named: str
) -> None:
    first = AudioFolder(str(folder_root), **small)
    first.setup()
    expected = np.array(first.splits["train"].waves)
    waves = next(p for p in (folder_root / ".ddlight_cache").glob("*_train_*.npy") if ".labels" not in p.name)
    waves.with_suffix(suffix).write_bytes(damage(waves.with_suffix(suffix).read_bytes()))
    shown = re.escape(waves.with_suffix(named).name)
    with pytest.warns(UserWarning, match=rf"cache of the train split is damaged: .*{shown}.*decoding the split again"):
        again = AudioFolder(str(folder_root), **small)
        again.setup()
    np.testing.assert_array_equal(again.splits["train"].waves, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        AudioFolder(str(folder_root), **small).setup()  # repaired: reused without a word


# ---------------------------------------------------------------------------------------- downloads
class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.state["payload"]``: truncated, honouring ``Range`` or stalling, as the state says.

    State keys: ``payload`` (bytes), ``truncate`` (how many more responses to cut in half), ``ranges``
    (honour ``Range`` requests), ``stall`` (an Event to wait on before answering, or None) and
    ``requests`` (the headers of every request, appended).
    """

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""

    def do_GET(self) -> None:
        state = self.server.state
        state["requests"].append(dict(self.headers))
        if state["stall"] is not None:
            state["stall"].wait(10)
            return
        payload, start = state["payload"], 0
        if state["ranges"] and self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state["truncate"] > 0:
            state["truncate"] -= 1
            body = body[: len(body) // 2]
        self.wfile.write(body)


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("top/meta.csv", "a,b\n1,2\n")
        zf.writestr("top/audio/x.wav", bytes(range(256)) * 64)
    return buffer.getvalue()


@pytest.fixture
def flaky() -> Iterator[tuple[dict[str, Any], str]]:
    """A :class:`_FlakyHandler` server on 127.0.0.1 (random port): its state and the archive's URL."""
    state = {"payload": _zip_bytes(), "truncate": 0, "ranges": False, "stall": None, "requests": []}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    server.state = state
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/top.zip"
    finally:
        if state["stall"] is not None:
            state["stall"].set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _unchecked(url: str) -> DownloadInfo:
    return DownloadInfo(url, "top.zip", archive_root="top")


def test_truncated_download_without_checksum_is_retried_then_refused(tmp_path: Path, flaky) -> None:
    state, url = flaky
    state["truncate"] = 2
    root = tmp_path / "root"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    pattern = rf"download of {re.escape(url)} failed after 2 attempts \(the server closed the connection after \d+ of "
    with pytest.raises(DownloadError, match=pattern + rf"{len(state['payload'])} bytes.*run again to resume"):
        download_and_extract(_unchecked(url), root, timeout=5, attempts=2)
    assert len(state["requests"]) == 2  # retried once
    assert not (root / "top.zip").exists() and (root / "notes.txt").read_text() == "mine"
    with pytest.warns(UserWarning, match="no published checksum"):
        download_and_extract(_unchecked(url), root, timeout=5)  # the next run completes it: nothing sticks
    assert (root / "meta.csv").read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in root.iterdir()) == ["audio", "meta.csv", "notes.txt"]


def test_download_resumes_with_a_range_request(tmp_path: Path, flaky) -> None:
    state, url = flaky
    state.update(truncate=1, ranges=True)
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match="run again to resume"):
        download_and_extract(_unchecked(url), root, timeout=5, attempts=1)
    half = partial_path(root / "top.zip").stat().st_size
    assert 0 < half < len(state["payload"])
    with pytest.warns(UserWarning, match="no published checksum"):
        download_and_extract(_unchecked(url), root, timeout=5)
    assert state["requests"][-1]["Range"] == f"bytes={half}-"
    assert (root / "audio" / "x.wav").read_bytes() == bytes(range(256)) * 64  # completed, not corrupted
    assert not partial_path(root / "top.zip").exists()


def test_http_404_names_the_url(tmp_path: Path, http_root) -> None:
    _, url = http_root
    pattern = rf"download of {re.escape(url)}/missing\.zip failed: HTTP 404 .*check the address.*download the archive"
    with pytest.raises(DownloadError, match=pattern + " by hand"):
        download_and_extract(DownloadInfo(f"{url}/missing.zip", "missing.zip"), tmp_path / "root", timeout=5)
    assert list((tmp_path / "root").iterdir()) == []


def test_stalling_server_times_out_naming_the_url(tmp_path: Path, flaky) -> None:
    state, url = flaky
    state["stall"] = threading.Event()
    start = time.monotonic()
    pattern = rf"download of {re.escape(url)} failed after 2 attempts \(TimeoutError.*timeout 0\.3 s\); run again"
    with pytest.raises(DownloadError, match=pattern + ", check your network"):
        download_and_extract(_unchecked(url), tmp_path / "root", timeout=0.3, attempts=2)
    assert time.monotonic() - start < 5 and len(state["requests"]) == 2


def test_damaged_archive_without_checksum_is_deleted_not_kept(tmp_path: Path, http_root) -> None:
    _, url = http_root
    root = tmp_path / "root"
    root.mkdir()
    (root / "top.zip").write_bytes(_zip_bytes()[:100])  # left by an interrupted run of an older version
    with pytest.warns(UserWarning, match="no published checksum"), pytest.raises(
        ArchiveError, match=r"top\.zip is neither a zip nor a tar archive; it came from .* was deleted: run again"
    ):
        download_and_extract(_unchecked(f"{url}/top.zip"), root)
    assert list(root.iterdir()) == []


def test_checksum_mismatch_deletes_the_download(tmp_path: Path, http_root) -> None:
    served, url = http_root
    (served / "a.zip").write_bytes(_zip_bytes())
    with pytest.raises(ValueError, match=r"checksum mismatch for a\.zip from .*expected md5 0{32}.*deleted, try again"):
        download_and_extract(DownloadInfo(f"{url}/a.zip", "a.zip", md5="0" * 32), tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []


# ------------------------------------------------------------------------------------ expert folders
EXPERT_NET = {
    "network": "convnet", "network_options": {"width": 4, "depth": 1}, "in_shape": [1, 8, 8], "num_classes": 3,
}


@pytest.fixture
def experts(tmp_path: Path) -> Path:
    """Two experts of three snapshots each, in the TrajectoryRecorder's format."""
    directory = tmp_path / "experts"
    torch.manual_seed(0)
    entries = []
    for k in range(2):
        net = build_network(EXPERT_NET["network"], EXPERT_NET["in_shape"], 3, **EXPERT_NET["network_options"])
        trajectory = {n: torch.stack([p.detach() * (1 + 0.1 * s) for s in range(3)]) for n, p in net.named_parameters()}
        save_tensors(directory / f"expert_{k:03d}.safetensors", trajectory)
        entries.append({"file": f"expert_{k:03d}.safetensors", "snapshots": 3})
    save_json(directory / MANIFEST, {**EXPERT_NET, "optimizer": {"name": "sgd", "lr": 0.01}, "experts": entries})
    return directory


def _edit_manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        manifest = json.loads((directory / MANIFEST).read_text())
        edit(manifest)
        (directory / MANIFEST).write_text(json.dumps(manifest))

    return apply


def _edit_expert(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        trajectory = load_trajectories(directory)[1][1]
        edit(trajectory)
        save_tensors(directory / "expert_001.safetensors", trajectory)

    return apply


def _write(name: str, data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda directory: (directory / name).write_bytes(data((directory / name).read_bytes()))


def _nan(trajectory: dict[str, torch.Tensor]) -> None:
    trajectory["classifier.weight"][2, 0, 1] = float("nan")


#: The remedy of every expert folder that does not fit its manifest.
_AGAIN = r".*record experts again with `ddlight fit --config configs/expert_<dataset>\.yaml` into an empty folder"
_SECOND = r".*expert_001\.safetensors"

EXPERT_CASES = {
    "manifest-not-json": (
        _write(MANIFEST, lambda b: b[:10]), ValueError, r"manifest\.json is not valid JSON .*delete or regenerate it"),
    "manifest-without-experts": (
        _edit_manifest(lambda m: m.pop("experts")), ValueError,
        r"manifest\.json lacks \['experts'\], so it is not a complete expert manifest" + _AGAIN),
    "manifest-without-in_shape": (
        _edit_manifest(lambda m: m.pop("in_shape")), ValueError, r"manifest\.json lacks \['in_shape'\]" + _AGAIN),
    "entry-without-file": (
        _edit_manifest(lambda m: m["experts"][1].pop("file")), ValueError,
        r"manifest\.json: experts entry 1 names no file" + _AGAIN),
    "listed-file-missing": (
        lambda d: (d / "expert_001.safetensors").unlink(), FileNotFoundError,
        _SECOND + r" is listed in .*manifest\.json but missing; restore it, or" + _AGAIN),
    "truncated-file": (
        _write("expert_001.safetensors", lambda b: b[: len(b) // 2]), ValueError,
        _SECOND + r" is truncated or not a safetensors file .*restore it, or delete it and run again"),
    "not-safetensors": (
        _write("expert_001.safetensors", lambda b: b"\x80\x04pickled"), ValueError,
        _SECOND + r" is truncated or not a safetensors file .*restore it, or delete it and run again"),
    "tampered-in_shape": (
        _edit_manifest(lambda m: m.update(in_shape=[1, 16, 8])), ValueError,
        r"expert_000\.safetensors: parameter 'classifier\.weight' has snapshots of shape \(3, 64\), but the network "
        r"its manifest describes has \(3, 128\); the manifest or the file was changed" + _AGAIN),
    "tampered-num_classes": (
        _edit_manifest(lambda m: m.update(num_classes=5)), ValueError,
        r"expert_000\.safetensors: parameter 'classifier\.(weight|bias)' has snapshots of shape \(3,.*\), but the "
        r"network its manifest describes has \(5" + _AGAIN),
    "unknown-network": (
        _edit_manifest(lambda m: m.update(network="transformer")), ValueError,
        r"manifest\.json describes no network that can be built \(unknown network 'transformer'" + _AGAIN),
    "missing-parameter": (
        _edit_expert(lambda t: t.pop("classifier.bias")), ValueError,
        _SECOND + r" does not hold the parameters .*missing \['classifier\.bias'\]" + _AGAIN),
    "snapshot-count": (
        _edit_manifest(lambda m: m["experts"][0].update(snapshots=5)), ValueError,
        r"expert_000\.safetensors holds \[3\] snapshots per parameter but its manifest entry says 5" + _AGAIN),
    "nan-trajectory": (
        _edit_expert(_nan), ValueError,
        _SECOND + r": parameter 'classifier\.weight' is NaN or infinite at snapshot 2 of 3 \(the expert diverged\); "
        r"delete expert_001\.safetensors and its entry in manifest\.json, or" + _AGAIN + " with a lower learning rate"),
}


def test_intact_experts_load(experts: Path) -> None:
    manifest, trajectories = load_trajectories(experts)
    assert len(trajectories) == 2 and trajectories[0]["classifier.weight"].shape == (3, 3, 64)


@pytest.mark.parametrize("case", list(EXPERT_CASES))
def test_bad_expert_folder_names_the_file_and_is_left_alone(experts: Path, case: str) -> None:
    corrupt, error, pattern = EXPERT_CASES[case]
    corrupt(experts)
    before = _files(experts)
    with pytest.raises(error, match=pattern):
        load_trajectories(experts)
    assert _files(experts) == before


# ------------------------------------------------------------------------------------------ synsets
CLASSES = ["low", "mid", "high"]


def _synset(**manifest: Any) -> Synset:
    """Two samples per class of shape (1, 4, 5), hard labels, with a full manifest (``manifest`` overrides)."""
    torch.manual_seed(0)
    record = {"format": "ddlight-synset-1", "method": "mtt", "ipc": 2, "num_classes": 3, "classes": CLASSES,
              "feature_shape": [1, 4, 5], **manifest}
    return Synset(torch.randn(6, 1, 4, 5), torch.arange(3).repeat_interleave(2), torch.zeros(1, 4, 1),
                  torch.ones(1, 4, 1), record)


def _resave(change: Callable[[Synset], None]) -> Callable[[Path], None]:
    """Rewrite the saved set's files with ``change`` applied, bypassing save_synset's checks (a tampered set)."""

    def apply(directory: Path) -> None:
        synset = _synset()
        change(synset)
        tensors = {"features": synset.features, "targets": synset.targets, "mean": synset.mean, "std": synset.std}
        save_tensors(directory / SYNSET_FILE, {k: v for k, v in tensors.items() if v is not None})
        save_json(directory / MANIFEST, synset.manifest)

    return apply


def _set_targets(targets: torch.Tensor) -> Callable[[Synset], None]:
    return lambda synset: setattr(synset, "targets", targets)


#: The remedy of every set whose files disagree with each other.
_RESTORE = r".*were changed or mixed up after they were written; restore them or distil the set again"

SYNSET_CASES = {
    "truncated-tensors": (
        _write(SYNSET_FILE, lambda b: b[: len(b) // 2]),
        r"synset\.safetensors is truncated or not a safetensors file .*restore it, or delete it and run again"),
    "not-safetensors": (
        _write(SYNSET_FILE, lambda b: b"PK\x03\x04 a zip, not tensors"),
        r"synset\.safetensors is truncated or not a safetensors file .*restore it, or delete it and run again"),
    "manifest-not-json": (
        _write(MANIFEST, lambda b: b"{'ipc': 2}"), r"manifest\.json is not valid JSON .*delete or regenerate it"),
    "manifest-a-list": (
        _write(MANIFEST, lambda b: b"[]"),
        r"manifest\.json is not a distilled-set manifest .*restore it or distil again"),
    "missing-tensor": (
        _resave(lambda s: setattr(s, "std", None)),
        r"synset\.safetensors lacks tensors \['std'\]; restore it or distil again"),
    "classes-vs-num_classes": (
        _resave(lambda s: s.manifest.update(num_classes=4)), r"manifest lists 3 classes but num_classes 4" + _RESTORE),
    "classes-vs-tensors": (
        _resave(lambda s: s.manifest.update(classes=[*CLASSES, "extra"], num_classes=4)),
        r"6 samples but the manifest's ipc 2 × 4 classes = 8" + _RESTORE),
    "ipc-vs-tensors": (
        _resave(lambda s: s.manifest.update(ipc=3)), r"6 samples but the manifest's ipc 3 × 3 classes = 9" + _RESTORE),
    "labels-vs-ipc": (
        _resave(_set_targets(torch.tensor([0, 0, 0, 1, 1, 2]))),
        r"labels give \[3, 2, 1\] samples per class but the manifest's ipc is 2" + _RESTORE),
    "label-out-of-range": (
        _resave(_set_targets(torch.tensor([0, 0, 1, 1, 2, 5]))), r"hard labels must be integers in 0\.\.2" + _RESTORE),
    "soft-labels-width": (
        _resave(_set_targets(torch.full((6, 4), 0.25))),
        r"soft labels over 4 classes but the manifest has 3" + _RESTORE),
    "feature_shape": (
        _resave(lambda s: s.manifest.update(feature_shape=[1, 4, 6])),
        r"manifest feature_shape \[1, 4, 6\] but features \[1, 4, 5\]" + _RESTORE),
    "mean-shape": (
        _resave(lambda s: setattr(s, "mean", torch.zeros(2, 4, 1))),
        r"mean \(2, 4, 1\) does not fit features \(1, 4, 5\)" + _RESTORE),
}


@pytest.mark.parametrize("case", list(SYNSET_CASES))
def test_bad_synset_names_the_file_and_is_left_alone(tmp_path: Path, case: str) -> None:
    corrupt, pattern = SYNSET_CASES[case]
    directory = save_synset(tmp_path / "distilled", _synset())
    corrupt(directory)
    before = _files(directory)
    with pytest.raises(ValueError, match=pattern) as err:
        load_synset(directory)
    assert str(directory) in str(err.value)
    assert _files(directory) == before


@pytest.mark.parametrize(
    ("bad", "error", "pattern"),
    [
        (_synset(ipc=5), ValueError, r"refusing to write an inconsistent distilled set to .*distilled \(6 samples but "
         r"the manifest's ipc 5 × 3 classes = 15\); nothing was written"),
        (_synset(syn_lr=torch.tensor(0.01)), TypeError, r"cannot write .*distilled/manifest\.json: Object of type "
         r"Tensor is not JSON serializable; store numbers, strings, lists and dicts only"),
    ],
    ids=["inconsistent", "manifest-not-json-able"],
)
def test_save_synset_refuses_before_touching_the_set_already_there(
    tmp_path: Path, bad: Synset, error: type[Exception], pattern: str
) -> None:
    directory = save_synset(tmp_path / "distilled", _synset())
    before = _files(directory)
    with pytest.raises(error, match=pattern):
        save_synset(directory, bad)
    assert _files(directory) == before and load_synset(directory).manifest["ipc"] == 2


def test_synset_datamodule_needs_the_classes(tmp_path: Path) -> None:
    synset = _synset()
    for key in ("classes", "num_classes"):
        synset.manifest.pop(key)
    directory = save_synset(tmp_path / "distilled", synset)
    with pytest.raises(ValueError, match=r"manifest\.json records neither classes nor num_classes.*add \"classes\""):
        SynsetDataModule(str(directory))


# ---------------------------------------------------------------------------------------------- ipc
@pytest.mark.parametrize("cls", [MTT, RFAD])
def test_absurd_ipc_fails_fast_before_allocating(cls: type) -> None:
    pattern = r"ipc=1000000000 asks for 10,000,000,000 synthetic samples of shape \(3, 20, 32\) \(10 classes\): "
    start = time.monotonic()
    with pytest.raises(ValueError, match=pattern + r".* GiB .*more than this machine's .* GiB of memory; .*lower ipc"):
        cls((3, 20, 32), 10, ipc=10**9)
    assert time.monotonic() - start < 5


def test_ipc_above_a_class_size() -> None:
    model = RFAD((1, 4, 5), 2, ipc=3, num_models=1, width=4, num_eval_models=1)
    pattern = (r"classes \{1: 2\} \(class: training samples\) have fewer than ipc=3; lower ipc to at most 2, "
               r"or initialise from noise")
    with pytest.raises(ValueError, match=pattern):
        model.initialize_from(torch.randn(5, 1, 4, 5), torch.tensor([0, 0, 0, 1, 1]))


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_absurd_ipc_raises_the_models_own_error() -> None:
    with pytest.raises(ValueError) as err:
        cli_main(["fit", "--config", str(CONFIGS / "mtt_synthetic.yaml"), "--model.init_args.ipc=1000000000"])
    message = str(err.value)
    assert message.startswith("ipc=1000000000 asks for") and message.endswith("lower ipc")  # not the parser's dump


def test_cli_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(tmp_path / "nothere.yaml")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert re.search(r"File does not exist: '.*nothere\.yaml'", message) and "fit --help" in message


def test_cli_data_root_without_the_dataset(tmp_path: Path) -> None:
    args = ["fit", "--config", str(CONFIGS / "expert_us8k.yaml"), f"--data.init_args.root={tmp_path / 'nothing'}"]
    pattern = r"nothing does not hold UrbanSound8K; expected the layout .*--data.download true"
    with pytest.raises(FileNotFoundError, match=pattern):
        cli_main([*args, "--trainer.max_epochs=1", "--trainer.logger=false"])
    assert not (tmp_path / "experts").exists()


@pytest.mark.parametrize(
    ("args", "error", "pattern"),
    [
        (["synset_eval.yaml", "--data.init_args.path=nowhere"], FileNotFoundError,
         r"^nowhere/synset\.safetensors not found: a distilled set folder holds"),
        (["expert_us8k.yaml", "--data.init_args.root=x", "--data.init_args.test_fold=11"], ValueError,
         r"^test_fold=11 is not a fold of this dataset; choose from"),
    ],
    ids=["synset-path", "us8k-fold"],
)
def test_cli_data_arguments_refused_with_the_datamodules_own_error(
    args: list[str], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        cli_main(["fit", "--config", str(CONFIGS / args[0]), *args[1:]])


TINY_DATA = ["--data.init_args.train_per_class=2", "--data.init_args.val_per_class=1",
             "--data.init_args.test_per_class=1", "--data.init_args.duration=0.25"]


@pytest.mark.parametrize(
    ("flag", "pattern"),
    [
        ("--trainer.logger.init_args.save_dir", r"cannot write the run folder under .*blocker/runs: .*; point "
                                                r"--trainer.logger.init_args.save_dir .* at a writable folder"),
        ("--trainer.callbacks.init_args.dirpath", r"cannot write experts to .*blocker/runs.*; choose a writable "
                                                  r"folder with --trainer.callbacks.init_args.dirpath"),
    ],
    ids=["run-folder", "expert-folder"],
)
def test_cli_unwritable_output_folder_fails_before_any_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str, pattern: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file where a folder is wanted")
    args = ["fit", "--config", str(CONFIGS / "expert_synthetic.yaml"), *TINY_DATA, "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false", f"{flag}={tmp_path / 'blocker/runs'}"]
    with pytest.raises(OSError, match=pattern):
        cli_main(args)
    assert (tmp_path / "blocker").read_text() == "a file where a folder is wanted"  # nothing overwritten
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.ckpt"))


# ------------------------------------------------------------------------------------------ compare
AL_RESULTS = {
    "dataset": "toy", "pool_size": 100, "num_classes": 2, "protocol": {"repeats": 1}, "total": [],
    "results": [{"network": "cnn4", "strategy": "random",
                 "points": [{"labelled": 20, "percent": 20.0, "mean": 50.0, "std": 0.0, "runs": [50.0]}]}],
}
EVALUATION = {
    "dataset": "toy", "method": "rfad", "ipc": 1,
    "results": [{"architecture": "cnn4", "synthetic": {"mean": 60.0, "std": 0.0, "runs": [60.0]}}],
}


def _compare(tmp_path: Path) -> None:
    compare_main(["--al", str(tmp_path / "al.json"), "--distilled", str(tmp_path / "distilled.json"),
                  "--out", str(tmp_path / "table.md")])


@pytest.mark.parametrize(
    ("al", "distilled", "pattern"),
    [
        (EVALUATION, EVALUATION, r"al\.json is not an al_results\.json \(it lacks \['pool_size', 'num_classes', "
         r"'protocol'\]\); pass the al_results\.json that an active-learning run"),
        (AL_RESULTS, AL_RESULTS, r"distilled\.json is not an evaluation\.json \(it lacks \['ipc'\]\); pass the "
         r"evaluation\.json that a distillation run writes"),
        (AL_RESULTS, [EVALUATION], r"distilled\.json is not an evaluation\.json \(it lacks \['dataset', 'ipc', "
         r"'results'\]\); pass the evaluation\.json"),
        ("{", EVALUATION, r"al\.json is not valid JSON .*delete or regenerate it"),
    ],
    ids=["evaluation-as-al", "al-as-evaluation", "a-list", "not-json"],
)
def test_compare_refuses_the_wrong_json_and_keeps_the_old_table(
    tmp_path: Path, al: Any, distilled: Any, pattern: str
) -> None:
    for name, document in (("al.json", al), ("distilled.json", distilled)):
        (tmp_path / name).write_text(document if isinstance(document, str) else json.dumps(document))
    (tmp_path / "table.md").write_text("the previous table")
    with pytest.raises(ValueError, match=pattern):
        _compare(tmp_path)
    assert (tmp_path / "table.md").read_text() == "the previous table"


def test_compare_accepts_the_right_json(tmp_path: Path) -> None:
    save_json(tmp_path / "al.json", AL_RESULTS)
    save_json(tmp_path / "distilled.json", EVALUATION)
    _compare(tmp_path)
    assert "Reduction vs rfad (ipc 1)" in (tmp_path / "table.md").read_text()
