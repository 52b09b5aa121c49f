"""Downloading from a local HTTP server: checksums, extraction, unsafe archives, prepare_data."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from ddlight.data.download import DownloadInfo, download_and_extract
from ddlight.data.urbansound8k import UrbanSound8K


def _tar_gz(target: Path, source: Path, arcname: str) -> str:
    """Pack ``source`` as ``arcname`` into ``target``; return the archive's MD5."""
    with tarfile.open(target, "w:gz") as tf:
        tf.add(source, arcname=arcname)
    return hashlib.md5(target.read_bytes()).hexdigest()


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith(".") or p.suffix in (".part", ".gz"))


def test_tar_gz_is_verified_unpacked_into_root_and_removed(tmp_path: Path, http_root, us8k_root: Path) -> None:
    served, url = http_root
    md5 = _tar_gz(served / "UrbanSound8K.tar.gz", us8k_root, "UrbanSound8K")
    info = DownloadInfo(f"{url}/UrbanSound8K.tar.gz", "UrbanSound8K.tar.gz", md5=md5, archive_root="UrbanSound8K")
    root = download_and_extract(info, tmp_path / "data" / "us8k")
    assert (root / "metadata" / "UrbanSound8K.csv").read_bytes() == (
        us8k_root / "metadata" / "UrbanSound8K.csv"
    ).read_bytes()
    assert len(list((root / "audio").rglob("*.wav"))) == 20
    assert _leftovers(root) == []


def test_zip_with_sha256(tmp_path: Path, http_root) -> None:
    served, url = http_root
    with zipfile.ZipFile(served / "d.zip", "w") as zf:
        zf.writestr("meta/esc50.csv", "filename\n")
        zf.writestr("audio/x.wav", b"RIFF")
    sha256 = hashlib.sha256((served / "d.zip").read_bytes()).hexdigest()
    root = download_and_extract(DownloadInfo(f"{url}/d.zip", "d.zip", sha256=sha256), tmp_path / "esc")
    assert (root / "meta" / "esc50.csv").read_text() == "filename\n"
    assert sorted(p.name for p in root.iterdir()) == ["audio", "meta"]


def test_checksum_mismatch_names_file_and_both_hashes_and_deletes_it(tmp_path: Path, http_root) -> None:
    served, url = http_root
    (served / "a.tar.gz").write_bytes(b"not what was published")
    actual = hashlib.md5(b"not what was published").hexdigest()
    info = DownloadInfo(f"{url}/a.tar.gz", "a.tar.gz", md5="0" * 32)
    with pytest.raises(ValueError, match="checksum mismatch for a.tar.gz") as err:
        download_and_extract(info, tmp_path / "root")
    assert "0" * 32 in str(err.value) and actual in str(err.value)
    assert list((tmp_path / "root").iterdir()) == []


def test_missing_checksum_warns_but_extracts(tmp_path: Path, http_root) -> None:
    served, url = http_root
    with zipfile.ZipFile(served / "d.zip", "w") as zf:
        zf.writestr("top/file.txt", "hello")
    with pytest.warns(UserWarning, match="cannot verify"):
        root = download_and_extract(DownloadInfo(f"{url}/d.zip", "d.zip", archive_root="top"), tmp_path / "r")
    assert (root / "file.txt").read_text() == "hello"


@pytest.mark.parametrize("kind", ["tar-dotdot", "tar-absolute", "tar-symlink", "zip-dotdot"])
def test_path_traversal_members_are_rejected(tmp_path: Path, http_root, kind: str) -> None:
    served, url = http_root
    name = f"evil.{'zip' if kind.startswith('zip') else 'tar.gz'}"
    if kind == "zip-dotdot":
        with zipfile.ZipFile(served / name, "w") as zf:
            zf.writestr("ok.txt", "fine")
            zf.writestr("../escaped.txt", "owned")
    else:
        with tarfile.open(served / name, "w:gz") as tf:
            names = {"tar-dotdot": "a/../../escaped.txt", "tar-absolute": "/tmp/escaped.txt"}
            member = tarfile.TarInfo(names.get(kind, "link"))
            if kind == "tar-symlink":
                member.type, member.linkname = tarfile.SYMTYPE, "../../etc/passwd"
                tf.addfile(member)
            else:
                member.size = 5
                tf.addfile(member, io.BytesIO(b"owned"))
    md5 = hashlib.md5((served / name).read_bytes()).hexdigest()
    root = tmp_path / "deep" / "root"
    with pytest.raises(ValueError, match="path traversal"):
        download_and_extract(DownloadInfo(f"{url}/{name}", name, md5=md5), root)
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not (root / "ok.txt").exists()
    assert [p.name for p in root.iterdir()] == [name]  # verified archive kept, no extraction folder


def test_prepare_data_downloads_only_when_asked(
    tmp_path: Path, http_root, us8k_root: Path, monkeypatch, small
) -> None:
    served, url = http_root
    md5 = _tar_gz(served / "UrbanSound8K.tar.gz", us8k_root, "UrbanSound8K")
    info = DownloadInfo(f"{url}/UrbanSound8K.tar.gz", "UrbanSound8K.tar.gz", md5=md5, archive_root="UrbanSound8K")
    monkeypatch.setattr(UrbanSound8K, "DOWNLOAD_INFO", info)
    root = tmp_path / "fresh"
    UrbanSound8K(str(root), **small).prepare_data()
    assert not root.exists()
    dm = UrbanSound8K(str(root), download=True, **small)
    dm.prepare_data()
    assert dm.splits == {} and (root / "metadata" / "UrbanSound8K.csv").is_file()
    dm.setup("fit")
    assert len(dm.splits["test"]) == 2
    (served / "UrbanSound8K.tar.gz").unlink()
    UrbanSound8K(str(root), download=True, **small).prepare_data()  # already there: no request made
