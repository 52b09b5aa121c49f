"""Downloading and unpacking an official dataset archive, safely.

:func:`download_and_extract` streams the archive to a temporary file (progress bar), checks its MD5 or
SHA-256 against the published value, unpacks it (zip or tar.gz) after rejecting members that would
land outside the target directory, and moves the contents into place. A failed or mismatching download
leaves no partial archive behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

_CHUNK = 1 << 20


@dataclass(frozen=True)
class DownloadInfo:
    """Where an archive lives and how to check it.

    Args:
        url: Official download address.
        filename: Name of the archive file (its extension selects zip or tar extraction).
        md5: Published MD5 hex digest, if any.
        sha256: Published SHA-256 hex digest, if any (checked in preference to ``md5``).
        archive_root: Folder inside the archive whose contents form the dataset root (``None``: the
            archive's top level is the root).
    """

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    archive_root: str | None = None


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file with ``hashlib`` algorithm ``algorithm``, read in chunks."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, info: DownloadInfo) -> None:
    """Check ``path`` against the checksum of ``info``; warn when none is published.

    Raises:
        ValueError: The digest differs (the message names the file, expected and actual hash).
    """
    algorithm, expected = ("sha256", info.sha256) if info.sha256 else ("md5", info.md5)
    if expected is None:
        warnings.warn(f"{info.filename}: no published checksum, cannot verify the download", stacklevel=2)
        return
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        raise ValueError(
            f"checksum mismatch for {info.filename} from {info.url}: expected {algorithm} {expected}, "
            f"got {actual}; the download was deleted, try again"
        )


def fetch(url: str, target: Path) -> None:
    """Stream ``url`` to ``target`` via a temporary file in the same folder, with a progress bar."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _escapes(path: str) -> bool:
    """Whether an archive path is absolute or climbs above the archive's top level with ``..``."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if path.startswith(("/", "\\")) or (parts and ":" in parts[0]):
        return True
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


def _check_member(name: str, link_target: str | None = None) -> None:
    """Reject a member whose path, or whose link target, would resolve outside the extraction folder."""
    if _escapes(name) or (link_target is not None and _escapes(link_target)):
        shown = name if link_target is None else f"{name} -> {link_target}"
        raise ValueError(f"unsafe archive member {shown!r} (path traversal); refusing to extract")


def extract_archive(archive: Path, target: Path) -> None:
    """Unpack a zip or tar(.gz) archive into ``target`` after checking every member path.

    Raises:
        ValueError: A member would be written outside ``target``, or the format is unknown.
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member(name)
            zf.extractall(target)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise ValueError(f"unsafe archive member {member.name!r} (device or fifo); not extracting")
                if member.issym():
                    _check_member(member.name, str(PurePosixPath(member.name).parent / member.linkname))
                else:
                    _check_member(member.name, member.linkname if member.islnk() else None)
            tf.extractall(target, filter="data")
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive")


def download_and_extract(info: DownloadInfo, root: str | os.PathLike) -> Path:
    """Download ``info.url`` into ``root``, verify it, unpack it there and delete the archive.

    The archive is kept between a failed extraction and the next attempt only if it verified.

    Args:
        info: Address, file name, checksum and archive layout.
        root: Dataset root; created if missing. The contents of ``info.archive_root`` end up directly
            in it.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: Checksum mismatch (the bad file is deleted) or an unsafe archive.
        urllib.error.URLError: The server cannot be reached.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / info.filename
    if not archive.exists():
        fetch(info.url, archive)
    try:
        verify_checksum(archive, info)
    except ValueError:
        archive.unlink()
        raise
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        extract_archive(archive, staging)
        source = staging / info.archive_root if info.archive_root else staging
        if not source.is_dir():
            raise ValueError(f"{info.filename} has no top-level folder {info.archive_root!r}")
        for entry in source.iterdir():
            os.replace(entry, root / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    return root
