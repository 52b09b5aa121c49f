"""Downloading and unpacking an official dataset archive, safely.

:func:`download_and_extract` streams the archive to a partial file next to it (progress bar), checks
that the server sent every byte it announced (``Content-Length``), checks its MD5 or SHA-256 against
the published value, unpacks it (zip or tar.gz) after rejecting members that would land outside the
target directory, and moves the contents into place. A short or stalled transfer is resumed with an
HTTP ``Range`` request (a few attempts, then a :class:`DownloadError` naming the URL); the partial file
``.<archive>.part`` is kept so that the next run resumes it. A mismatching checksum deletes the archive,
and so does an archive without a published checksum that cannot be unpacked, so a bad download never
sticks.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

_CHUNK = 1 << 20
#: Seconds without any data from the server before an attempt is given up.
TIMEOUT = 60.0
#: Attempts (the first plus resumptions) before a short or stalled transfer is an error.
ATTEMPTS = 3
#: What goes wrong with a transfer that another attempt may fix.
_TRANSIENT = (TimeoutError, ConnectionError, http.client.HTTPException, urllib.error.URLError)


class DownloadError(OSError):
    """A download failed; the message names the URL, what went wrong and what to do."""


class ArchiveError(ValueError):
    """A downloaded file cannot be read as a zip or tar archive (truncated, damaged or another format)."""


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


def verify_checksum(path: Path, info: DownloadInfo) -> bool:
    """Check ``path`` against the checksum of ``info``; warn when none is published.

    Returns:
        Whether a published checksum was checked (``False``: none to check against).

    Raises:
        ValueError: The digest differs (the message names the file, expected and actual hash).
    """
    algorithm, expected = ("sha256", info.sha256) if info.sha256 else ("md5", info.md5)
    if expected is None:
        warnings.warn(f"{info.filename}: no published checksum, cannot verify the download", stacklevel=2)
        return False
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        raise ValueError(
            f"checksum mismatch for {info.filename} from {info.url}: expected {algorithm} {expected}, "
            f"got {actual}; the download was deleted, try again"
        )
    return True


# ------------------------------------------------------------------------------------- transfer
def partial_path(target: Path) -> Path:
    """Where the bytes of ``target`` received so far are kept until it is complete."""
    return target.with_name(f".{target.name}.part")


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Request ``url`` from byte ``offset`` on (a ``Range`` request when ``offset > 0``).

    Raises:
        DownloadError: The server answered with an HTTP error other than 416 (range not satisfiable).
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            raise  # the partial file does not fit the remote one: the caller starts over
        raise DownloadError(
            f"download of {url} failed: HTTP {err.code} {err.reason}; check the address (and your network), "
            "or download the archive by hand and unpack it into the dataset root"
        ) from err


def _resumes(response: http.client.HTTPResponse, offset: int) -> bool:
    """Whether ``response`` continues the partial file at byte ``offset`` (a matching ``206``)."""
    content_range = response.headers.get("Content-Range") or ""
    return offset > 0 and response.status == 206 and content_range.startswith(f"bytes {offset}-")


def _request(url: str, part: Path, timeout: float) -> tuple[http.client.HTTPResponse, bool]:
    """Open ``url`` to continue the partial file ``part`` (a ``Range`` request) or to start it over.

    Returns:
        The response, and whether it continues ``part`` (a partial file the server cannot continue is
        deleted).

    Raises:
        ConnectionError: The server answered the range request with another range (``part`` is deleted,
            so the next attempt starts over).
    """
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError:  # 416: the partial file does not fit the remote one
        part.unlink()
        return _open(url, 0, timeout), False
    if response.status == 206 and not _resumes(response, offset):
        response.close()
        part.unlink()
        raise ConnectionError(f"the server answered bytes={offset}- with {response.headers.get('Content-Range')!r}")
    return response, _resumes(response, offset)


def _attempt(url: str, target: Path, timeout: float) -> int | None:
    """Append to ``target``'s partial file what the server sends (or rewrite it from the start).

    Returns:
        The announced size of the whole file (``None`` when the server announces none).
    """
    part = partial_path(target)
    response, resumed = _request(url, part, timeout)
    with response, part.open("ab" if resumed else "wb") as out:
        length = response.headers.get("Content-Length")
        total = None if length is None else out.tell() + int(length)
        with tqdm(total=total, initial=out.tell(), unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    return total


def fetch(url: str, target: Path, timeout: float = TIMEOUT, attempts: int = ATTEMPTS) -> None:
    """Download ``url`` to ``target``, resuming a short or stalled transfer with ``Range`` requests.

    The bytes go to :func:`partial_path` first, which is renamed to ``target`` only once the server has
    sent the whole announced ``Content-Length``. A partial file left by an earlier run is resumed.

    Args:
        url: Address of the file.
        target: Final path.
        timeout: Seconds without data before an attempt is abandoned.
        attempts: Attempts in all (the first one and the resumptions).

    Raises:
        DownloadError: HTTP error, or the file is still incomplete after ``attempts`` attempts (the
            partial file is kept, so running again resumes it).
    """
    part = partial_path(target)
    reason = "no attempt made"
    for _ in range(attempts):
        try:
            total = _attempt(url, target, timeout)
        except _TRANSIENT as err:
            reason = f"{type(err).__name__}: {err}"
            continue
        size = part.stat().st_size
        if total is None or size == total:
            os.replace(part, target)
            return
        reason = f"the server closed the connection after {size} of {total} bytes"
    received = part.stat().st_size if part.is_file() else 0
    kept = f"{received} bytes are kept in {part}: run again to resume, " if received else "run again, "
    raise DownloadError(
        f"download of {url} failed after {attempts} attempts ({reason}; timeout {timeout:g} s); {kept}"
        f"check your network, or download the archive by hand and put it at {target}"
    )


# ------------------------------------------------------------------------------------- archives
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


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            _check_member(name)
        zf.extractall(target)


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise ValueError(f"unsafe archive member {member.name!r} (device or fifo); not extracting")
            if member.issym():
                _check_member(member.name, str(PurePosixPath(member.name).parent / member.linkname))
            else:
                _check_member(member.name, member.linkname if member.islnk() else None)
        tf.extractall(target, filter="data")


def extract_archive(archive: Path, target: Path) -> None:
    """Unpack a zip or tar(.gz) archive into ``target`` after checking every member path.

    Raises:
        ValueError: A member would be written outside ``target``.
        ArchiveError: The file is not a zip or tar archive, or it is truncated or damaged.
    """
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, target)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, target)
        else:
            raise ArchiveError(f"{archive} is neither a zip nor a tar archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ArchiveError(f"{archive} is truncated or damaged ({type(err).__name__}: {err})") from err


def _unpack(archive: Path, info: DownloadInfo, root: Path, verified: bool) -> None:
    """Extract ``archive`` into a staging folder and move ``info.archive_root``'s contents into ``root``.

    Raises:
        ArchiveError: The archive cannot be read; an unverified one is deleted so that the next run
            downloads it again.
    """
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        extract_archive(archive, staging)
        source = staging / info.archive_root if info.archive_root else staging
        if not source.is_dir():
            raise ValueError(f"{info.filename} has no top-level folder {info.archive_root!r}")
        for entry in source.iterdir():
            os.replace(entry, root / entry.name)
    except ArchiveError as err:
        if verified:
            raise
        archive.unlink()
        raise ArchiveError(
            f"{err}; it came from {info.url} without a published checksum and was deleted: run again to "
            "download it anew"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_and_extract(
    info: DownloadInfo, root: str | os.PathLike, timeout: float = TIMEOUT, attempts: int = ATTEMPTS
) -> Path:
    """Download ``info.url`` into ``root``, verify it, unpack it there and delete the archive.

    The archive is kept between a failed extraction and the next attempt only if it verified.

    Args:
        info: Address, file name, checksum and archive layout.
        root: Dataset root; created if missing. The contents of ``info.archive_root`` end up directly
            in it.
        timeout: Seconds without data from the server before an attempt is abandoned.
        attempts: Download attempts (see :func:`fetch`).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: HTTP error, unreachable or stalling server, or a transfer still short after
            ``attempts`` attempts (named by URL; the partial file is kept and resumed next time).
        ValueError: Checksum mismatch (the bad file is deleted) or an unsafe archive.
        ArchiveError: The archive cannot be unpacked.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / info.filename
    if not archive.exists():
        fetch(info.url, archive, timeout, attempts)
    try:
        verified = verify_checksum(archive, info)
    except ValueError:
        archive.unlink()
        raise
    _unpack(archive, info, root, verified)
    archive.unlink()
    return root
