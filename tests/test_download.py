"""Download, resume, checksum, safe extraction and dataset preparation, on loopback only."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from lgkd_core.data import download as dl
from lgkd_core.data.sources import open_source

from helpers import LoopbackServer


# -- loopback server --------------------------------------------------------------------------
class _Server(LoopbackServer):
    """Serves ``files`` by path, with Range; records every request's path and Range."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ignore_range = False
        self.cut_first_after: int | None = None  # first response stops after this many bytes
        super().__init__()

    def respond(self, h) -> None:
        rng = h.headers.get("Range")
        data = self.files.get(h.path)
        if data is None:
            h.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not self.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if self.cut_first_after is not None:
            body = body[: self.cut_first_after]
            self.cut_first_after = None
            h.close_connection = True
        h.wfile.write(body)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_DELAY_S", 0.0)


def _payload(n: int = 300_000) -> bytes:
    return os.urandom(n)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# -- download ---------------------------------------------------------------------------------
def test_full_download_with_checksum(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    dest = tmp_path / "out" / "a.bin"
    got = dl.download(server.url("/a.bin"), dest, sha256=_sha(data), chunk=4096)
    assert got == dest
    assert dest.read_bytes() == data
    assert not (tmp_path / "out" / "a.bin.part").exists()
    assert server.requests == [("/a.bin", None)]
    # an existing file with the right digest is reused without contacting the server
    dl.download(server.url("/a.bin"), dest, sha256=_sha(data))
    assert len(server.requests) == 1


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    wrong = _sha(b"something else")
    dest = tmp_path / "a.bin"
    url = server.url("/a.bin")
    with pytest.raises(dl.ChecksumError) as e:
        dl.download(url, dest, sha256=wrong)
    msg = str(e.value)
    assert url in msg and wrong in msg and _sha(data) in msg
    assert not dest.exists()
    assert not (tmp_path / "a.bin.part").exists()


def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    server.cut_first_after = 100_000
    dest = tmp_path / "a.bin"
    with pytest.raises(dl.DownloadError, match="resume"):
        dl.download(server.url("/a.bin"), dest, sha256=_sha(data), retries=0)
    part = tmp_path / "a.bin.part"
    assert not dest.exists()
    assert part.read_bytes() == data[:100_000]
    dl.download(server.url("/a.bin"), dest, sha256=_sha(data), retries=0)
    assert dest.read_bytes() == data
    assert server.requests == [("/a.bin", None), ("/a.bin", "bytes=100000-")]


def test_dropped_connection_is_retried_within_one_call(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    server.cut_first_after = 12_345
    dest = tmp_path / "a.bin"
    dl.download(server.url("/a.bin"), dest, sha256=_sha(data), retries=2)
    assert dest.read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=12345-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    server.ignore_range = True
    dest = tmp_path / "a.bin"
    # a stale .part whose bytes are wrong: appending to it would corrupt the file
    (tmp_path / "a.bin.part").write_bytes(b"\xff" * 5000)
    dl.download(server.url("/a.bin"), dest, sha256=_sha(data))
    assert dest.read_bytes() == data
    assert server.requests == [("/a.bin", "bytes=5000-")]


def test_wrong_part_resumed_is_caught_by_checksum(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    (tmp_path / "a.bin.part").write_bytes(b"\x00" * 1000)
    with pytest.raises(dl.ChecksumError):
        dl.download(server.url("/a.bin"), tmp_path / "a.bin", sha256=_sha(data))
    assert not (tmp_path / "a.bin.part").exists()
    # the next attempt starts from scratch and succeeds
    dl.download(server.url("/a.bin"), tmp_path / "a.bin", sha256=_sha(data))
    assert (tmp_path / "a.bin").read_bytes() == data


def test_complete_part_answered_416_is_finished(server, tmp_path):
    data = _payload(5000)
    server.files["/a.bin"] = data
    (tmp_path / "a.bin.part").write_bytes(data)
    dl.download(server.url("/a.bin"), tmp_path / "a.bin", sha256=_sha(data))
    assert (tmp_path / "a.bin").read_bytes() == data
    assert server.requests == [("/a.bin", "bytes=5000-")]


def test_http_404_names_url(server, tmp_path):
    with pytest.raises(dl.DownloadError, match=r"404.*--source"):
        dl.download(server.url("/missing.zip"), tmp_path / "m.zip")
    assert not (tmp_path / "m.zip").exists()


def test_file_url(tmp_path):
    data = _payload()
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dest = tmp_path / "d" / "copy.bin"
    dl.download(src.as_uri(), dest, sha256=_sha(data))
    assert dest.read_bytes() == data
    with pytest.raises(dl.ChecksumError):
        dl.download(src.as_uri(), tmp_path / "other.bin", sha256="0" * 64)
    assert not (tmp_path / "other.bin").exists()
    assert not (tmp_path / "other.bin.part").exists()


# -- safe extraction --------------------------------------------------------------------------
_Member = tuple[tarfile.TarInfo, "bytes | None"]


def _tar(path: Path, members: list[_Member], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"ok") -> _Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes) -> _Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _device(name: str) -> _Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, None


_BAD_TAR = {
    "absolute": (lambda: _file("/tmp/evil.txt"), "/tmp/evil.txt"),
    "dotdot": (lambda: _file("a/../../evil.txt"), "a/../../evil.txt"),
    "symlink_up": (lambda: _link("a/up", "../../outside", tarfile.SYMTYPE), "a/up"),
    "symlink_abs": (lambda: _link("etc", "/etc", tarfile.SYMTYPE), "etc"),
    "hardlink_up": (lambda: _link("h", "../outside.txt", tarfile.LNKTYPE), "h"),
    "hardlink_abs": (lambda: _link("h", "/etc/passwd", tarfile.LNKTYPE), "h"),
    "device": (lambda: _device("dev/null"), "dev/null"),
}


@pytest.mark.parametrize("mode", ["w", "w:gz"])
@pytest.mark.parametrize("case", sorted(_BAD_TAR))
def test_tar_unsafe_members_refused_nothing_extracted(tmp_path, case, mode):
    make, name = _BAD_TAR[case]
    archive = _tar(
        tmp_path / f"bad.tar{'.gz' if 'gz' in mode else ''}", [_file("good.txt"), make()], mode
    )
    target = tmp_path / "root" / "target"
    with pytest.raises(dl.UnsafeArchiveError) as e:
        dl.safe_extract(archive, target)
    assert repr(name) in str(e.value) and str(archive) in str(e.value)
    assert not (tmp_path / "root").exists()
    assert not (tmp_path / "outside").exists() and not (tmp_path / "evil.txt").exists()


def test_tar_chained_links_refused(tmp_path):
    # "a" -> "." and "b" -> "a/.." stay inside lexically but b resolves to target's parent
    archive = _tar(
        tmp_path / "chain.tar",
        [_link("a", ".", tarfile.SYMTYPE), _link("b", "a/..", tarfile.SYMTYPE), _file("b/x")],
    )
    with pytest.raises(dl.UnsafeArchiveError, match="'b'"):
        dl.safe_extract(archive, tmp_path / "t")
    assert not (tmp_path / "t").exists() and not (tmp_path / "x").exists()


def test_tar_safe_archive_extracts_with_inside_links(tmp_path):
    archive = _tar(
        tmp_path / "ok.tar.gz",
        [
            _file("d/f.txt", b"hello"),
            _link("d/alias.txt", "f.txt", tarfile.SYMTYPE),
            _link("d/hard.txt", "d/f.txt", tarfile.LNKTYPE),
        ],
        "w:gz",
    )
    target = tmp_path / "t"
    dl.safe_extract(archive, target)
    assert (target / "d/f.txt").read_bytes() == b"hello"
    assert (target / "d/alias.txt").is_symlink()
    assert (target / "d/alias.txt").read_bytes() == b"hello"
    assert (target / "d/hard.txt").read_bytes() == b"hello"


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def _zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16) | 0  # S_IFLNK
    info.create_system = 3  # unix
    return info, target.encode()


_BAD_ZIP = {
    "absolute": (lambda: (zipfile.ZipInfo("/tmp/evil.txt"), b"x"), "/tmp/evil.txt"),
    "drive": (lambda: (zipfile.ZipInfo("C:/evil.txt"), b"x"), "C:/evil.txt"),
    "dotdot": (lambda: (zipfile.ZipInfo("a/../../evil.txt"), b"x"), "a/../../evil.txt"),
    "backslash_dotdot": (lambda: (zipfile.ZipInfo("a\\..\\..\\evil.txt"), b"x"), "a"),
    "symlink_up": (lambda: _zip_symlink("up", "../../outside"), "up"),
    "symlink_abs": (lambda: _zip_symlink("etc", "/etc"), "etc"),
}


@pytest.mark.parametrize("case", sorted(_BAD_ZIP))
def test_zip_unsafe_members_refused_nothing_extracted(tmp_path, case):
    make, name = _BAD_ZIP[case]
    info, data = make()
    archive = _zip(tmp_path / "bad.zip", [("good.txt", b"ok"), (info, data)])
    with zipfile.ZipFile(archive) as zf:  # the crafted name really is in the archive
        stored = zf.namelist()[1]
    assert stored.startswith(name)
    target = tmp_path / "target"
    with pytest.raises(dl.UnsafeArchiveError) as e:
        dl.safe_extract(archive, target)
    assert repr(stored) in str(e.value)
    assert not target.exists()
    assert not (tmp_path / "evil.txt").exists()


def test_zip_safe_archive_extracts(tmp_path):
    archive = _zip(tmp_path / "ok.zip", [("d/", b""), ("d/f.txt", b"hello")])
    dl.safe_extract(archive, tmp_path / "t")
    assert (tmp_path / "t/d/f.txt").read_bytes() == b"hello"


# -- prepare_dataset --------------------------------------------------------------------------
def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("P", (4, 4), 0).save(buf, format="PNG")
    return buf.getvalue()


def _fake_voc_archives(d: Path) -> dict[str, Path]:
    """Tiny archives with the real archives' internal structure."""
    d.mkdir()
    ids = ["2007_000032", "2007_000039"]
    voc_members = [
        _file(f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg", b"jpeg" + i.encode()) for i in ids
    ]
    voc_members.append(_file("VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", b"2007_000039\n"))
    sbd = [(f"SegmentationClassAug/{i}.png", _png()) for i in ids]
    sbd.append(("__MACOSX/SegmentationClassAug/._x.png", b"junk"))
    line = "/JPEGImages/{0}.jpg /SegmentationClassAug/{0}.png\n"
    lists = [
        ("list/train_aug.txt", line.format(ids[0]).encode()),
        ("list/val.txt", line.format(ids[1]).encode()),
    ]
    return {
        "voc": _tar(d / "VOCtrainval_11-May-2012.tar", voc_members),
        "sbd": _zip(d / "SegmentationClassAug.zip", sbd),
        "list": _zip(d / "list.zip", lists),
    }


def _local_sources(archives: dict[str, Path]) -> dict[str, dl.ArchiveSource]:
    spec = {s.name: s for s in dl.SOURCES["voc"].sources}
    return {
        n: dataclasses.replace(spec[n], url=p.as_uri(), sha256=None) for n, p in archives.items()
    }


def test_prepare_voc_layout_marker_and_noop(tmp_path, server):
    archives = _fake_voc_archives(tmp_path / "mirror")
    data_root = tmp_path / "data"
    root = dl.prepare_dataset("voc", data_root, sources=_local_sources(archives))
    assert root == data_root / "PascalVOC2012"
    assert sorted(p.name for p in root.iterdir()) == [
        ".done",
        "SegmentationClassAug",
        "VOCdevkit",
        "list",
    ]
    assert (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").exists()
    assert not (data_root / "__MACOSX").exists()
    assert sorted(p.name for p in data_root.iterdir()) == ["PascalVOC2012"]  # no leftovers
    marker = json.loads((root / ".done").read_text())
    assert marker["dataset"] == "voc"
    assert set(marker["sources"]) == {"voc", "sbd", "list"}  # visualization skipped
    for name, path in archives.items():
        assert marker["sources"][name]["url"] == path.as_uri()
        assert marker["sources"][name]["sha256"] == _sha(path.read_bytes())
    src = open_source("voc", data_root)  # the layout the readers expect
    assert src.ids("train") == ["2007_000032"] and src.ids("val") == ["2007_000039"]
    assert src.image_path("train", "2007_000032").read_bytes() == b"jpeg2007_000032"
    assert src.mask_path("val", "2007_000039").exists()
    # second call: marker present, nothing is fetched even from a reachable server
    server.files["/x.tar"] = b"not used"
    again = {n: server.url("/x.tar") for n in archives}
    before = (root / ".done").stat().st_mtime_ns
    assert dl.prepare_dataset("voc", data_root, sources=again) == root
    assert server.requests == []
    assert (root / ".done").stat().st_mtime_ns == before


def test_prepare_failure_writes_no_marker_then_completes(tmp_path, server):
    archives = _fake_voc_archives(tmp_path / "mirror")
    sources = _local_sources(archives)
    bad = dict(sources, list=dataclasses.replace(sources["list"], sha256="0" * 64))
    data_root = tmp_path / "data"
    with pytest.raises(dl.ChecksumError, match=r"list\.zip"):
        dl.prepare_dataset("voc", data_root, sources=bad, keep_archives=True)
    assert not (data_root / "PascalVOC2012/.done").exists()
    # second run: archives already downloaded are reused (served over HTTP, only list fetched)
    server.files["/list.zip"] = archives["list"].read_bytes()
    retry = dict(sources, list=dataclasses.replace(sources["list"], url=server.url("/list.zip")))
    root = dl.prepare_dataset("voc", data_root, sources=retry, keep_archives=True)
    assert (root / ".done").exists() and (root / "list/train_aug.txt").exists()
    assert server.requests == [("/list.zip", None)]
    assert sorted(p.name for p in (data_root / dl.DOWNLOAD_DIR).iterdir()) == sorted(
        p.name for p in archives.values()
    )


def test_prepare_rejects_archive_with_wrong_layout(tmp_path):
    archives = _fake_voc_archives(tmp_path / "mirror")
    archives["list"] = _zip(tmp_path / "mirror" / "other.zip", [("lists/train.txt", b"x")])
    with pytest.raises(dl.DownloadError, match=r"list/train_aug\.txt"):
        dl.prepare_dataset("voc", tmp_path / "data", sources=_local_sources(archives))
    assert not (tmp_path / "data/PascalVOC2012/.done").exists()


def test_cli_arguments(tmp_path):
    archives = _fake_voc_archives(tmp_path / "mirror")
    parser = argparse.ArgumentParser()
    dl.add_arguments(parser)
    argv = ["--dataset", "voc", "--data-root", str(tmp_path / "data")]
    for name, path in archives.items():
        argv += ["--source", f"{name}={path.as_uri()}"]
    argv += ["--sha256", "voc=none", "--sha256", f"sbd={_sha(archives['sbd'].read_bytes())}"]
    assert dl.run(parser.parse_args(argv)) == 0
    marker = json.loads((tmp_path / "data/PascalVOC2012/.done").read_text())
    assert marker["sources"]["sbd"]["sha256_verified"] is True
    assert marker["sources"]["voc"]["sha256_verified"] is False
    with pytest.raises(SystemExit, match="unknown archive 'nope'"):
        dl.run(parser.parse_args([*argv[:4], "--source", "nope=file:///x"]))


def test_unknown_dataset_and_source_names():
    with pytest.raises(ValueError, match="voc, ade"):
        dl.prepare_dataset("coco", Path("/nonexistent"))
    with pytest.raises(ValueError, match="valid: voc, sbd"):
        dl.prepare_dataset("voc", Path("/nonexistent"), sources={"bogus": "file:///x"})


def test_known_sources_point_at_reference_locations():
    # URLs of the reference's data/download_voc.sh and data/download_ade.sh
    urls = {s.name: s.url for spec in dl.SOURCES.values() for s in spec.sources}
    assert urls["voc"].endswith("/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar")
    assert urls["sbd"] == "http://cs.jhu.edu/~cxliu/data/SegmentationClassAug.zip"
    assert urls["list"] == "http://cs.jhu.edu/~cxliu/data/list.zip"
    assert urls["ade"] == "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"


def test_existing_dest_with_wrong_digest_is_replaced(server, tmp_path):
    data = _payload(4000)
    server.files["/a.bin"] = data
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"stale")
    dl.download(server.url("/a.bin"), dest, sha256=_sha(data))
    assert dest.read_bytes() == data
    assert server.requests == [("/a.bin", None)]


def test_prepare_ade_layout(tmp_path):
    base = "ADEChallengeData2016"
    entries = [(f"{base}/objectInfo150.txt", b"x")]
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        entries.append((f"{base}/images/{split}/{stem}.jpg", b"jpeg"))
        entries.append((f"{base}/annotations/{split}/{stem}.png", _png()))
    archive = _zip(tmp_path / "ADEChallengeData2016.zip", entries)
    spec = dl.SOURCES["ade"].sources[0]
    src = dataclasses.replace(spec, url=archive.as_uri(), sha256=None)
    root = dl.prepare_dataset("ade", tmp_path / "data", sources={"ade": src})
    assert root == tmp_path / "data" / base
    assert json.loads((root / ".done").read_text())["sources"]["ade"]["sha256"] == _sha(
        archive.read_bytes()
    )
    ade = open_source("ade", tmp_path / "data")
    assert ade.ids("train") == ["ADE_train_00000001"] and ade.ids("val") == ["ADE_val_00000001"]
    assert ade.mask_path("val", "ADE_val_00000001").exists()
