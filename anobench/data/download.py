"""Download (resumably), verify and safely extract the MVTec AD archive.

Why: the archive is ~5 GB on a slow host; a dropped connection must not restart from zero, a
corrupt archive must never be extracted, and a hostile or broken archive must not write outside
the dataset root. Machines without internet put the archive in place by hand and run the same
function.

Integrity: the official SHA-256 of the archive is not published with it, so ``MVTEC_SHA256`` is
None. Then the digest is computed on first successful download (or first use of an archive put
in place by hand) and recorded in a ``<archive>.sha256`` sidecar; every later use verifies the
archive against that sidecar before extracting. Pass ``sha256=`` (or set ``MVTEC_SHA256``) to
verify against a known digest instead.

The network access goes through a ``fetch(url, offset) -> FetchResult`` function that can be
injected, so tests never touch the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

from anobench.errors import DataError

__all__ = ["MVTEC_URL", "MVTEC_SHA256", "ARCHIVE_NAME", "FetchResult", "download_mvtec", "sha256_of"]

MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
    "mvtec_anomaly_detection.tar.xz"
)
MVTEC_SHA256: str | None = None
ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"
EXTRACTED_MARKER = ".anobench_extracted.json"
_CHUNK = 1 << 20


@dataclass
class FetchResult:
    """A (possibly ranged) response: ``start`` is the byte offset of the first chunk.

    A server that ignores the Range header answers from byte 0 (``start=0``); ``total`` is the
    full size of the file when known.
    """

    chunks: Iterable[bytes]
    start: int
    total: int | None = None
    close: Callable[[], None] = field(default=lambda: None)


Fetch = Callable[[str, int], FetchResult]


def _fetch_urllib(url: str, offset: int) -> FetchResult:
    """GET url from ``offset`` with an HTTP Range request (urllib, no extra dependency)."""
    request = urllib.request.Request(url, headers={"User-Agent": "anobench"})
    if offset > 0:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)  # noqa: S310 - fixed https URL by default
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset > 0:  # range not satisfiable: we already have everything
            return FetchResult(chunks=[], start=offset, total=offset)
        raise
    status = getattr(response, "status", 200)
    length = response.headers.get("Content-Length")
    start = offset if status == 206 else 0
    total = None
    content_range = response.headers.get("Content-Range", "")
    if status == 206 and "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        total = int(content_range.rsplit("/", 1)[1])
    elif length is not None and length.isdigit():
        total = start + int(length)

    def chunks() -> Iterator[bytes]:
        while True:
            block = response.read(_CHUNK)
            if not block:
                return
            yield block

    return FetchResult(chunks=chunks(), start=start, total=total, close=response.close)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(archive: Path) -> Path:
    return archive.with_name(archive.name + ".sha256")


def _verify(archive: Path, sha256: str | None, sidecar: Path | None = None) -> str:
    """Check the archive against ``sha256`` or its sidecar; record the sidecar on first use."""
    actual = sha256_of(archive)
    sidecar = sidecar or _sidecar(archive)
    expected, source = (sha256.lower(), "the expected sha256") if sha256 else (None, "")
    if expected is None and sidecar.is_file():
        text = sidecar.read_text().split()
        expected, source = (text[0].lower() if text else ""), f"the digest recorded in {sidecar}"
    if expected is None:
        sidecar.write_text(f"{actual}  {sidecar.name[: -len('.sha256')]}\n")
        return actual
    if actual != expected:
        raise DataError(
            f"archive {archive} is corrupt or not the expected file: its sha256 is {actual} but {source} is "
            f"{expected}. Delete {archive} (and {sidecar} if you replaced the archive on purpose) and download again"
        )
    if not sidecar.is_file():
        sidecar.write_text(f"{actual}  {sidecar.name[: -len('.sha256')]}\n")
    return actual


def _safe_extract(archive: Path, root: Path) -> None:
    """Extract into root, rejecting absolute paths, '..', links escaping root and special files."""
    root_resolved = root.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                name = PurePosixPath(member.name)
                target = (root_resolved / member.name).resolve()
                if name.is_absolute() or ".." in name.parts or not target.is_relative_to(root_resolved):
                    raise DataError(f"archive {archive} has member '{member.name}' that would be written outside {root}")
                if member.issym() or member.islnk():
                    base = target.parent if member.issym() else root_resolved
                    link = (base / member.linkname).resolve()
                    if PurePosixPath(member.linkname).is_absolute() or not link.is_relative_to(root_resolved):
                        raise DataError(
                            f"archive {archive} has link '{member.name}' -> '{member.linkname}' pointing outside {root}"
                        )
                elif not (member.isfile() or member.isdir()):
                    raise DataError(f"archive {archive} has special file '{member.name}'; expected files and folders only")
            extract_kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, members=members, **extract_kwargs)
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract archive {archive} into {root}: {exc}") from None


def _rerun_hint(root: Path) -> str:
    return f"anobench data download mvtec --root {root}"


def _download(url: str, part: Path, fetch: Fetch, root: Path, archive: Path) -> None:
    """Append to ``part`` from its current size; restart when the server ignores Range."""
    offset = part.stat().st_size if part.is_file() else 0
    manual = (
        f"Download it by hand from https://www.mvtec.com/company/research/datasets/mvtec-ad, put the archive at "
        f"{archive}, and re-run: {_rerun_hint(root)}"
    )
    try:
        result = fetch(url, offset)
    except (OSError, urllib.error.URLError, TimeoutError, ValueError) as exc:
        raise DataError(f"could not download MVTec AD from {url}: {exc}. {manual}") from None
    try:
        if result.start not in (0, offset):
            raise DataError(f"server answered from byte {result.start} when {offset} was requested for {url}. {manual}")
        mode = "ab" if result.start == offset else "wb"
        with open(part, mode) as fh:
            for block in result.chunks:
                fh.write(block)
    except DataError:
        raise
    except (OSError, urllib.error.URLError, TimeoutError, ValueError) as exc:
        raise DataError(
            f"download of {url} was interrupted: {exc}. The partial file {part} is kept and the next run resumes it; "
            f"or: {manual}"
        ) from None
    finally:
        result.close()
    size = part.stat().st_size
    if result.total is not None and size != result.total:
        raise DataError(
            f"download of {url} is incomplete ({size} of {result.total} bytes in {part}); re-run to resume: "
            f"{_rerun_hint(root)}"
        )


def download_mvtec(
    root: str | Path,
    archive: Path | None = None,
    url: str = MVTEC_URL,
    sha256: str | None = MVTEC_SHA256,
    *,
    fetch: Fetch | None = None,
) -> Path:
    """Make MVTec AD available under ``root`` (the folder that will hold bottle/, cable/, ...).

    With ``archive``: verify it and extract it. Without: use ``<root>/mvtec_anomaly_detection.tar.xz``
    if present, else download it resumably to ``<root>/mvtec_anomaly_detection.tar.xz.part`` (HTTP
    Range) and rename it when complete. The archive is verified (``sha256`` or its ``.sha256``
    sidecar, see module docstring) on every use before extracting; extraction is skipped when a
    previous extraction of the same digest finished. Returns ``root``.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    fetch = fetch or _fetch_urllib
    if archive is not None:
        archive = Path(archive).expanduser()
        if not archive.is_file():
            raise DataError(f"archive {archive} does not exist; expected the downloaded {ARCHIVE_NAME}")
        digest = _verify(archive, sha256)
    elif (root / ARCHIVE_NAME).is_file():
        archive = root / ARCHIVE_NAME
        digest = _verify(archive, sha256)
    else:
        archive = root / ARCHIVE_NAME
        part = archive.with_name(archive.name + ".part")
        _download(url, part, fetch, root, archive)
        try:
            digest = _verify(part, sha256, sidecar=_sidecar(archive))
        except DataError as exc:
            part.unlink(missing_ok=True)  # a complete download with the wrong digest cannot be resumed
            raise DataError(f"{exc} (the downloaded file {part} was deleted so that the next run starts afresh)") from None
        os.replace(part, archive)
    marker = root / EXTRACTED_MARKER
    try:
        done = json.loads(marker.read_text()).get("sha256") == digest
    except (OSError, ValueError, AttributeError):
        done = False
    if not done:
        _safe_extract(archive, root)
        marker.write_text(json.dumps({"archive": archive.name, "sha256": digest}) + "\n")
    return root
