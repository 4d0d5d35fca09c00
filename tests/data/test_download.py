"""Download: resume with Range, sha256 verification (given or sidecar), safe extraction; no network."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path

import pytest

from anobench.data import download
from anobench.data.download import ARCHIVE_NAME, FetchResult, download_mvtec
from anobench.errors import DataError

URL = "https://example.invalid/mvtec_anomaly_detection.tar.xz"


def _build_archive(path: Path, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A tiny tar.xz with bottle/train/good/000.png-like members (content need not be images)."""
    with tarfile.open(path, "w:xz") as tar:
        noise = random.Random(0).randbytes(6000)  # incompressible, so the archive has several chunks
        for name, payload in (
            ("bottle/train/good/000.png", b"A" * 3000 + noise),
            ("bottle/test/good/000.png", b"B" * 2000),
            ("license.txt", b"CC BY-NC-SA 4.0"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path.read_bytes()


class FakeServer:
    """Serves ``data`` honouring the requested offset; records every offset asked for."""

    def __init__(self, data: bytes, chunk: int = 1000, fail_after: int | None = None, honour_range: bool = True):
        self.data, self.chunk, self.fail_after, self.honour_range = data, chunk, fail_after, honour_range
        self.offsets: list[int] = []

    def __call__(self, url: str, offset: int) -> FetchResult:
        assert url == URL
        self.offsets.append(offset)
        start = offset if self.honour_range else 0

        def chunks():
            sent = 0
            for i in range(start, len(self.data), self.chunk):
                if self.fail_after is not None and sent >= self.fail_after:
                    raise ConnectionResetError("connection reset by peer")
                block = self.data[i : i + self.chunk]
                sent += len(block)
                yield block

        return FetchResult(chunks=chunks(), start=start, total=len(self.data))


@pytest.fixture
def archive_bytes(tmp_path: Path) -> bytes:
    return _build_archive(tmp_path / "src.tar.xz")


def test_fresh_download_extracts_and_records_sidecar(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    server = FakeServer(archive_bytes)
    assert download_mvtec(root, url=URL, fetch=server) == root
    assert server.offsets == [0]
    assert (root / "bottle" / "train" / "good" / "000.png").read_bytes()[:3000] == b"A" * 3000
    assert (root / ARCHIVE_NAME).read_bytes() == archive_bytes
    assert not (root / (ARCHIVE_NAME + ".part")).exists()
    sidecar = root / (ARCHIVE_NAME + ".sha256")
    assert sidecar.read_text().split()[0] == hashlib.sha256(archive_bytes).hexdigest()


def test_interrupted_download_resumes_from_partial_file(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    flaky = FakeServer(archive_bytes, fail_after=2000)
    with pytest.raises(DataError) as info:
        download_mvtec(root, url=URL, fetch=flaky)
    part = root / (ARCHIVE_NAME + ".part")
    assert str(part) in str(info.value) and "resume" in str(info.value)
    assert part.stat().st_size == 2000
    server = FakeServer(archive_bytes)
    download_mvtec(root, url=URL, fetch=server)
    assert server.offsets == [2000], "the second run must continue with a Range request from the partial size"
    assert (root / ARCHIVE_NAME).read_bytes() == archive_bytes
    assert (root / "bottle" / "test" / "good" / "000.png").exists()


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    root.mkdir()
    (root / (ARCHIVE_NAME + ".part")).write_bytes(archive_bytes[:1500])
    server = FakeServer(archive_bytes, honour_range=False)
    download_mvtec(root, url=URL, fetch=server)
    assert server.offsets == [1500]
    assert (root / ARCHIVE_NAME).read_bytes() == archive_bytes


def test_network_failure_says_where_to_put_the_archive(tmp_path: Path) -> None:
    def offline(url: str, offset: int) -> FetchResult:
        raise OSError("Name or service not known")

    root = tmp_path / "mvtec"
    with pytest.raises(DataError) as info:
        download_mvtec(root, url=URL, fetch=offline)
    message = str(info.value)
    assert str(root / ARCHIVE_NAME) in message and f"anobench data download mvtec --root {root}" in message and URL in message


def test_default_fetch_is_injectable_by_monkeypatch(
    tmp_path: Path, archive_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeServer(archive_bytes)
    monkeypatch.setattr(download, "_fetch_urllib", server)
    download_mvtec(tmp_path / "mvtec", url=URL)
    assert server.offsets == [0]


def test_sha256_mismatch_names_the_file(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    with pytest.raises(DataError) as info:
        download_mvtec(root, url=URL, sha256="0" * 64, fetch=FakeServer(archive_bytes))
    assert str(root / (ARCHIVE_NAME + ".part")) in str(info.value) and "0" * 64 in str(info.value)
    assert not (root / ARCHIVE_NAME).exists() and not (root / "bottle").exists()
    # a given archive with the wrong digest is not extracted either
    given = tmp_path / "given.tar.xz"
    given.write_bytes(archive_bytes)
    with pytest.raises(DataError, match=str(given)):
        download_mvtec(root, archive=given, sha256="f" * 64)
    assert not (root / "bottle").exists()


def test_existing_archive_is_accepted_and_verified_against_sidecar(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    root.mkdir()
    archive = root / ARCHIVE_NAME
    archive.write_bytes(archive_bytes)

    def no_network(url: str, offset: int) -> FetchResult:
        raise AssertionError("must not download when the archive is present")

    download_mvtec(root, fetch=no_network)
    assert (root / "bottle" / "train" / "good" / "000.png").exists()
    assert (root / (ARCHIVE_NAME + ".sha256")).is_file()
    # the archive changes afterwards (corruption): verification against the sidecar fails
    archive.write_bytes(archive_bytes[:-10] + b"0123456789")
    with pytest.raises(DataError) as info:
        download_mvtec(root, fetch=no_network)
    assert str(archive) in str(info.value) and ".sha256" in str(info.value)


def test_explicit_archive_with_known_digest(tmp_path: Path, archive_bytes: bytes) -> None:
    given = tmp_path / "elsewhere" / "copy.tar.xz"
    given.parent.mkdir()
    given.write_bytes(archive_bytes)
    root = download_mvtec(tmp_path / "mvtec", archive=given, sha256=hashlib.sha256(archive_bytes).hexdigest())
    assert (root / "license.txt").read_bytes() == b"CC BY-NC-SA 4.0"
    with pytest.raises(DataError, match=str(tmp_path / "missing.tar.xz")):
        download_mvtec(tmp_path / "mvtec", archive=tmp_path / "missing.tar.xz")


@pytest.mark.parametrize(
    "member",
    [
        ("file", "../escape.txt", ""),
        ("file", "/abs/escape.txt", ""),
        ("sym", "bottle/link", "../../outside"),
        ("sym", "bottle/abslink", "/etc/passwd"),
    ],
)
def test_unsafe_members_are_rejected(tmp_path: Path, member: tuple[str, str, str]) -> None:
    kind, name, target = member
    info = tarfile.TarInfo(name)
    if kind == "file":
        info.size = 4
    else:
        info.type, info.linkname = tarfile.SYMTYPE, target
    archive = tmp_path / "evil.tar.xz"
    _build_archive(archive, extra=[info])
    root = tmp_path / "deep" / "mvtec"
    with pytest.raises(DataError) as info_exc:
        download_mvtec(root, archive=archive)
    assert name in str(info_exc.value) and str(archive) in str(info_exc.value)
    assert not (tmp_path / "deep" / "escape.txt").exists() and not (root / "bottle" / "link").exists()
