"""Download: resume with Range, verification against the pinned size and digest before extraction, safe tar and
zip extraction, the MVTec count check, the by-hand route in every failure; small local archives, no network."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from anobench import cli
from anobench.data import download
from anobench.data.download import (
    ARCHIVE_NAME, BTAD, DATASETS, EXTRACTED_MARKER, MPDD, MVTEC, VISA, Counts, DatasetSpec, Digest, Extra,
    FetchResult, download_dataset, download_mvtec,
)
from anobench.errors import AnobenchError, DataError

URL = "https://example.invalid/mvtec_anomaly_detection.tar.xz"
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"


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


def _spec(data: bytes, base: DatasetSpec = MVTEC, counts: Counts | None = None, **changes) -> DatasetSpec:
    """``base`` with the tiny archive's size and SHA-256 pinned instead of the real ones (5 GB is not for tests)."""
    return replace(base, urls=(URL,), size=len(data), digest=Digest("sha256", hashlib.sha256(data).hexdigest()),
                   counts=counts, **changes)


def _unverified(base: DatasetSpec = MVTEC) -> DatasetSpec:
    return replace(base, size=None, digest=None, counts=None)


class FakeServer:
    """Serves ``data`` honouring the requested offset; records every offset asked for."""

    def __init__(self, data: bytes, chunk: int = 1000, fail_after: int | None = None, honour_range: bool = True,
                 total: bool = True, stop_at: int | None = None):
        self.data, self.chunk, self.fail_after, self.honour_range = data, chunk, fail_after, honour_range
        self.total, self.stop_at = total, stop_at
        self.offsets: list[int] = []

    def __call__(self, url: str, offset: int) -> FetchResult:
        assert url == URL
        self.offsets.append(offset)
        start = offset if self.honour_range else 0
        end = len(self.data) if self.stop_at is None else self.stop_at

        def chunks():
            sent = 0
            for i in range(start, end, self.chunk):
                if self.fail_after is not None and sent >= self.fail_after:
                    raise ConnectionResetError("connection reset by peer")
                block = self.data[i : min(i + self.chunk, end)]
                sent += len(block)
                yield block

        return FetchResult(chunks=chunks(), start=start, total=len(self.data) if self.total else None)


def no_network(url: str, offset: int) -> FetchResult:
    raise AssertionError("must not download")


@pytest.fixture
def archive_bytes(tmp_path: Path) -> bytes:
    return _build_archive(tmp_path / "src.tar.xz")


def test_pinned_archives_are_the_published_ones() -> None:
    assert MVTEC.digest == Digest("sha256", "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d")
    assert MVTEC.size == 5_264_982_680 and MVTEC.file_name == ARCHIVE_NAME and MVTEC.format == "tar.xz"
    assert MVTEC.counts == Counts(categories=15, train=3629, test_good=467, test_defective=1258)
    assert VISA.file_name == "VisA_20220922.tar" and VISA.size == 1_929_840_640
    assert VISA.digest == Digest("sha256", "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362")
    assert [e.path for e in VISA.extras] == ["split_csv/1cls.csv"]
    assert BTAD.file_name == "btad.zip" and BTAD.digest == Digest("md5", "c1fa4d56ac50dd50908ce04e81037a8e")
    assert MPDD.urls == () and MPDD.digest is None
    assert sorted(DATASETS) == ["btad", "mpdd", "mvtec", "visa"]


def test_fresh_download_is_verified_and_extracted(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    server = FakeServer(archive_bytes)
    assert download_dataset(_spec(archive_bytes), root, fetch=server) == root
    assert server.offsets == [0]
    assert (root / "bottle" / "train" / "good" / "000.png").read_bytes()[:3000] == b"A" * 3000
    assert (root / ARCHIVE_NAME).read_bytes() == archive_bytes
    assert not (root / (ARCHIVE_NAME + ".part")).exists()
    marker = json.loads((root / EXTRACTED_MARKER).read_text())
    assert marker["digest"] == "sha256:" + hashlib.sha256(archive_bytes).hexdigest()


def test_interrupted_download_resumes_from_partial_file(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    spec = _spec(archive_bytes)
    flaky = FakeServer(archive_bytes, fail_after=2000)
    with pytest.raises(DataError) as info:
        download_dataset(spec, root, fetch=flaky)
    part = root / (ARCHIVE_NAME + ".part")
    assert str(part) in str(info.value) and "resume" in str(info.value) and "--archive" in str(info.value)
    assert part.stat().st_size == 2000
    server = FakeServer(archive_bytes)
    download_dataset(spec, root, fetch=server)
    assert server.offsets == [2000], "the second run must continue with a Range request from the partial size"
    assert (root / ARCHIVE_NAME).read_bytes() == archive_bytes
    assert (root / "bottle" / "test" / "good" / "000.png").exists()


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    root.mkdir()
    (root / (ARCHIVE_NAME + ".part")).write_bytes(archive_bytes[:1500])
    server = FakeServer(archive_bytes, honour_range=False)
    download_dataset(_spec(archive_bytes), root, fetch=server)
    assert server.offsets == [1500]
    assert (root / ARCHIVE_NAME).read_bytes() == archive_bytes


def test_network_failure_says_where_to_get_the_archive_and_how_to_pass_it(tmp_path: Path) -> None:
    def offline(url: str, offset: int) -> FetchResult:
        raise OSError("HTTP Error 404: Not Found")

    root = tmp_path / "mvtec"
    with pytest.raises(DataError) as info:
        download_mvtec(root, url=URL, fetch=offline)
    message = str(info.value)
    assert str(root / ARCHIVE_NAME) in message and f"anobench data download mvtec --root {root}" in message and URL in message
    assert MVTEC_PAGE in message and f"anobench data download mvtec --root {root} --archive FILE" in message
    assert "404" in message and not (root / "bottle").exists()


def test_truncated_download_is_not_extracted_and_resumes(tmp_path: Path, archive_bytes: bytes) -> None:
    """The server closes early without saying the size: the pinned size catches it before extraction."""
    root = tmp_path / "mvtec"
    with pytest.raises(DataError) as info:
        download_dataset(_spec(archive_bytes), root, fetch=FakeServer(archive_bytes, total=False, stop_at=3000))
    message = str(info.value)
    assert f"3000 of {len(archive_bytes)} bytes" in message and "resume" in message and MVTEC_PAGE in message
    assert not (root / "bottle").exists() and (root / (ARCHIVE_NAME + ".part")).stat().st_size == 3000


def test_truncated_archive_given_by_hand_fails_on_size_before_extraction(tmp_path: Path, archive_bytes: bytes) -> None:
    given = tmp_path / "given.tar.xz"
    given.write_bytes(archive_bytes[:-100])
    root = tmp_path / "mvtec"
    with pytest.raises(DataError) as info:
        download_dataset(_spec(archive_bytes), root, archive=given)
    message = str(info.value)
    assert str(given) in message and str(len(archive_bytes) - 100) in message and str(len(archive_bytes)) in message
    assert "truncated" in message and not (root / "bottle").exists()


def test_digest_mismatch_names_both_digests_and_extracts_nothing(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    actual = hashlib.sha256(archive_bytes).hexdigest()
    with pytest.raises(DataError) as info:
        download_mvtec(root, url=URL, sha256="0" * 64, fetch=FakeServer(archive_bytes))
    message = str(info.value)
    assert str(root / (ARCHIVE_NAME + ".part")) in message and "0" * 64 in message and actual in message
    assert not (root / ARCHIVE_NAME).exists() and not (root / "bottle").exists()
    assert not (root / (ARCHIVE_NAME + ".part")).exists(), "a complete wrong download is deleted, not resumed"
    # a given archive with the wrong digest is not extracted either
    given = tmp_path / "given.tar.xz"
    given.write_bytes(archive_bytes)
    with pytest.raises(DataError, match=str(given)) as info:
        download_mvtec(root, archive=given, sha256="f" * 64)
    assert "f" * 64 in str(info.value) and actual in str(info.value)
    assert not (root / "bottle").exists()


def test_the_real_pinned_digest_rejects_another_file(tmp_path: Path, archive_bytes: bytes) -> None:
    given = tmp_path / ARCHIVE_NAME
    given.write_bytes(archive_bytes)
    with pytest.raises(DataError) as info:
        download_mvtec(tmp_path / "mvtec", archive=given)
    assert str(MVTEC.size) in str(info.value) and not (tmp_path / "mvtec" / "bottle").exists()


def test_existing_archive_is_accepted_and_verified_against_pinned_digest(tmp_path: Path, archive_bytes: bytes) -> None:
    root = tmp_path / "mvtec"
    root.mkdir()
    archive = root / ARCHIVE_NAME
    archive.write_bytes(archive_bytes)
    spec = _spec(archive_bytes)
    download_dataset(spec, root, fetch=no_network)
    assert (root / "bottle" / "train" / "good" / "000.png").exists()
    # the archive changes afterwards (corruption, same size): verification against the pinned digest fails
    archive.write_bytes(archive_bytes[:-10] + b"0123456789")
    with pytest.raises(DataError) as info:
        download_dataset(spec, root, fetch=no_network)
    assert str(archive) in str(info.value) and spec.digest.value in str(info.value)


def test_explicit_archive_with_known_digest(tmp_path: Path, archive_bytes: bytes) -> None:
    given = tmp_path / "elsewhere" / "copy.tar.xz"
    given.parent.mkdir()
    given.write_bytes(archive_bytes)
    tiny = _unverified()
    root = download_mvtec(tmp_path / "mvtec", archive=given, sha256=hashlib.sha256(archive_bytes).hexdigest(), spec=tiny)
    assert (root / "license.txt").read_bytes() == b"CC BY-NC-SA 4.0"
    with pytest.raises(DataError, match=str(tmp_path / "missing.tar.xz")):
        download_mvtec(tmp_path / "mvtec", archive=tmp_path / "missing.tar.xz")


def test_default_fetch_is_injectable_by_monkeypatch(
    tmp_path: Path, archive_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeServer(archive_bytes)
    monkeypatch.setattr(download, "_fetch_urllib", server)
    download_dataset(_spec(archive_bytes), tmp_path / "mvtec", url=URL)
    assert server.offsets == [0]


@pytest.mark.parametrize(
    "member",
    [
        ("file", "../escape.txt", ""),
        ("file", "/abs/escape.txt", ""),
        ("sym", "bottle/link", "../../outside"),
        ("sym", "bottle/abslink", "/etc/passwd"),
    ],
)
def test_unsafe_tar_members_are_rejected(tmp_path: Path, member: tuple[str, str, str]) -> None:
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
        download_dataset(_unverified(), root, archive=archive)
    assert name in str(info_exc.value) and str(archive) in str(info_exc.value)
    assert not (tmp_path / "deep" / "escape.txt").exists() and not (root / "bottle").exists()


def _build_zip(path: Path, extra: dict[str, bytes] | None = None) -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("BTech_Dataset_transformed/01/train/ok/0000.bmp", b"C" * 500)
        zf.writestr("BTech_Dataset_transformed/01/test/ko/0000.bmp", b"D" * 500)
        for name, payload in (extra or {}).items():
            zf.writestr(name, payload)
    return path.read_bytes()


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_unsafe_zip_members_are_rejected(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "evil.zip"
    _build_zip(archive, {name: b"evil"})
    root = tmp_path / "deep" / "btad"
    with pytest.raises(DataError) as info:
        download_dataset(_unverified(BTAD), root, archive=archive)
    assert name in str(info.value) and str(archive) in str(info.value)
    assert not (tmp_path / "deep" / "escape.txt").exists() and not (root / "BTech_Dataset_transformed").exists()


def test_btad_zip_is_verified_with_md5_and_extracted(tmp_path: Path) -> None:
    data = _build_zip(tmp_path / "src.zip")
    spec = replace(BTAD, urls=(URL,), digest=Digest("md5", hashlib.md5(data).hexdigest()))  # noqa: S324 - as published
    root = download_dataset(spec, tmp_path / "btad", fetch=FakeServer(data))
    assert (root / "BTech_Dataset_transformed" / "01" / "train" / "ok" / "0000.bmp").read_bytes() == b"C" * 500
    assert (root / "btad.zip").read_bytes() == data
    wrong = replace(spec, digest=Digest("md5", "0" * 32))
    with pytest.raises(DataError) as info:
        download_dataset(wrong, tmp_path / "btad2", archive=tmp_path / "src.zip")
    assert "md5" in str(info.value) and "0" * 32 in str(info.value) and hashlib.md5(data).hexdigest() in str(info.value)
    assert not (tmp_path / "btad2" / "BTech_Dataset_transformed").exists()


def _build_mvtec_layout(path: Path, categories: int, train: int, good: int, defective: int) -> bytes:
    """A tar.xz in MVTec's layout with the given number of images per category."""
    with tarfile.open(path, "w:xz") as tar:
        def add(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"png"))

        for c in range(categories):
            for i in range(train):
                add(f"cat{c}/train/good/{i:03d}.png")
            for i in range(good):
                add(f"cat{c}/test/good/{i:03d}.png")
            for i in range(defective):
                add(f"cat{c}/test/crack/{i:03d}.png")
                add(f"cat{c}/ground_truth/crack/{i:03d}_mask.png")  # masks are not counted as images
        add("license.txt")
    return path.read_bytes()


def test_counts_are_checked_after_extraction(tmp_path: Path) -> None:
    expected = Counts(categories=2, train=6, test_good=2, test_defective=4)
    right = _build_mvtec_layout(tmp_path / "right.tar.xz", categories=2, train=3, good=1, defective=2)
    download_dataset(_spec(right, counts=expected), tmp_path / "ok", archive=tmp_path / "right.tar.xz")
    assert (tmp_path / "ok" / EXTRACTED_MARKER).is_file()

    wrong = _build_mvtec_layout(tmp_path / "wrong.tar.xz", categories=2, train=2, good=1, defective=3)
    root = tmp_path / "bad"
    with pytest.raises(DataError) as info:
        download_dataset(_spec(wrong, counts=expected), root, archive=tmp_path / "wrong.tar.xz")
    message = str(info.value)
    assert "train images: 4 (expected 6)" in message and "defective test images: 6 (expected 4)" in message
    assert "good test images" not in message and str(root) in message
    assert not (root / EXTRACTED_MARKER).exists(), "a failed count check must not mark the extraction done"


def test_visa_tar_and_split_csv(tmp_path: Path) -> None:
    csv_url = "https://example.invalid/1cls.csv"
    with tarfile.open(tmp_path / "visa.tar", "w") as tar:
        info = tarfile.TarInfo("candle/Data/Images/Normal/0000.JPG")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"jpeg"))
    data = (tmp_path / "visa.tar").read_bytes()
    server = FakeServer(data)

    def fetch(url: str, offset: int) -> FetchResult:
        if url == csv_url:
            return FetchResult(chunks=[b"object,split,label,image,mask\n"], start=0)
        return server(url, offset)

    spec = _spec(data, base=VISA, extras=(Extra("split_csv/1cls.csv", csv_url),))
    root = download_dataset(spec, tmp_path / "visa", fetch=fetch)
    assert (root / "candle" / "Data" / "Images" / "Normal" / "0000.JPG").read_bytes() == b"jpeg"
    assert (root / "split_csv" / "1cls.csv").read_text().startswith("object,split")


def test_mpdd_needs_an_archive(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        download_dataset("mpdd", tmp_path / "mpdd", fetch=no_network)
    message = str(info.value)
    assert "https://github.com/stepanje/MPDD" in message and "--archive" in message
    archive = tmp_path / "mpdd.zip"
    _build_zip(archive)
    root = download_dataset("mpdd", tmp_path / "mpdd", archive=archive, fetch=no_network)  # no published digest
    assert (root / "BTech_Dataset_transformed" / "01" / "train" / "ok" / "0000.bmp").exists()


def test_cli_data_download(tmp_path: Path, archive_bytes: bytes, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    for env in ("ANOBENCH_MVTEC_ROOT", "ANOBENCH_VISA_ROOT", "ANOBENCH_BTAD_ROOT", "ANOBENCH_MPDD_ROOT"):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(AnobenchError, match="ANOBENCH_VISA_ROOT"):
        cli.data_command(["download", "visa"])
    with pytest.raises(DataError, match="stepanje/MPDD"):
        cli.data_command(["download", "mpdd", "--root", str(tmp_path / "mpdd")])
    # --archive, and the root from the dataset's environment variable
    monkeypatch.setitem(DATASETS, "mvtec", _spec(archive_bytes))
    given = tmp_path / "given.tar.xz"
    given.write_bytes(archive_bytes)
    monkeypatch.setenv("ANOBENCH_MVTEC_ROOT", str(tmp_path / "mvtec"))
    assert cli.data_command(["download", "mvtec", "--archive", str(given)]) == 0
    assert (tmp_path / "mvtec" / "bottle" / "train" / "good" / "000.png").exists()
    assert "MVTec AD ready" in capsys.readouterr().out
    # --url replaces the built-in link
    data = _build_zip(tmp_path / "src.zip")
    monkeypatch.setitem(DATASETS, "btad", replace(BTAD, urls=("https://example.invalid/dead.zip",),
                                                  digest=Digest("md5", hashlib.md5(data).hexdigest())))  # noqa: S324
    server = FakeServer(data)
    monkeypatch.setattr(download, "_fetch_urllib", server)
    assert cli.data_command(["download", "btad", "--root", str(tmp_path / "btad"), "--url", URL]) == 0
    assert server.offsets == [0] and (tmp_path / "btad" / "BTech_Dataset_transformed").is_dir()


def test_zip_symlink_pointing_outside_is_rejected(tmp_path: Path) -> None:
    import stat

    link = zipfile.ZipInfo("BTech_Dataset_transformed/link")
    link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "evil.zip"
    _build_zip(archive)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(link, "../../../outside")
    root = tmp_path / "btad"
    with pytest.raises(DataError, match="pointing outside"):
        download_dataset(_unverified(BTAD), root, archive=archive)
    assert not (root / "BTech_Dataset_transformed").exists()
