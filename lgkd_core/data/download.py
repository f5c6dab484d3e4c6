"""Download and unpack the real datasets: VOC 2012 (+ SBD augmented masks and lists), ADE20k.

Downloads stream to ``<dest>.part`` (progress in the log) and resume with an HTTP ``Range``
request; the SHA-256 (and, where one is known, the MD5) is checked before the file gets its final
name. Archives are checked member by member before
anything is extracted (:func:`safe_extract`). :func:`prepare_dataset` writes ``<root>/.done``
last, so a dataset folder without it is incomplete and is redone on the next call.

Checksums: only the VOC trainval tar has a published SHA-256 (the same value is used by
torchvision, Keras and TFDS). The other archives have none we can vouch for; their digest is
computed on download and recorded in ``<root>/.done`` so later copies can be checked against it
(``--sha256 NAME=HEX``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lgkd_core.io import atomic_write_json, parse_pairs

log = logging.getLogger(__name__)

DOWNLOAD_DIR = ".downloads"  # under data_root; archives wait here until extracted
MARKER = ".done"
_JUNK = ("__MACOSX",)  # macOS resource forks shipped inside the SBD zips
RETRY_DELAY_S = 0.5  # first back-off after a dropped connection; doubles per attempt
PROGRESS_STEP = 64 << 20  # bytes between progress lines when the size is unknown


class DownloadError(RuntimeError):
    """A download failed (network, HTTP status, truncated or wrong content)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected SHA-256 (or MD5)."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target or is not a plain file/dir/link."""


@dataclass(frozen=True)
class ArchiveSource:
    """One archive of a dataset.

    ``extract_to`` is relative to ``data_root``; ``provides`` is a path relative to ``data_root``
    that must exist once the archive is extracted (checks that a mirror has the right layout).
    """

    name: str
    url: str
    filename: str
    extract_to: str
    provides: str
    sha256: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    root: str  # dataset folder under data_root; holds the completion marker
    sources: tuple[ArchiveSource, ...]


_VOC = "PascalVOC2012"
_ADE = "ADEChallengeData2016"

SOURCES: dict[str, DatasetSpec] = {
    "voc": DatasetSpec(
        root=_VOC,
        sources=(
            ArchiveSource(
                name="voc",
                url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                filename="VOCtrainval_11-May-2012.tar",
                extract_to=_VOC,
                provides=f"{_VOC}/VOCdevkit/VOC2012/JPEGImages",
                sha256="e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
            ),
            ArchiveSource(
                name="sbd",
                url="http://cs.jhu.edu/~cxliu/data/SegmentationClassAug.zip",
                filename="SegmentationClassAug.zip",
                extract_to=_VOC,
                provides=f"{_VOC}/SegmentationClassAug",
            ),
            ArchiveSource(
                name="sbd_visualization",
                url="http://cs.jhu.edu/~cxliu/data/SegmentationClassAug_Visualization.zip",
                filename="SegmentationClassAug_Visualization.zip",
                extract_to=_VOC,
                provides=f"{_VOC}/SegmentationClassAug_Visualization",
                optional=True,
            ),
            ArchiveSource(
                name="list",
                url="http://cs.jhu.edu/~cxliu/data/list.zip",
                filename="list.zip",
                extract_to=_VOC,
                provides=f"{_VOC}/list/train_aug.txt",
            ),
        ),
    ),
    "ade": DatasetSpec(
        root=_ADE,
        sources=(
            ArchiveSource(
                name="ade",
                url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                filename="ADEChallengeData2016.zip",
                extract_to=".",
                provides=f"{_ADE}/annotations/validation",
            ),
        ),
    ),
}


# -- download ---------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 20, algorithm: str = "sha256") -> str:
    """Hex digest (SHA-256 unless ``algorithm`` names another hashlib one) of a file's bytes."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file's bytes (the checksum some model files are published with)."""
    return sha256_file(path, chunk, "md5")


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _copy_stream(src, out, chunk: int, total: int | None = None, done: int = 0, name=None):
    """Copy ``src`` to ``out``; with ``name``, log progress every tenth of ``total`` bytes (every
    ``PROGRESS_STEP`` when the size is unknown). ``done``: bytes already in ``out``."""
    step = max(total // 10, 1) if total else PROGRESS_STEP
    mark = done + step
    while block := src.read(chunk):
        out.write(block)
        done += len(block)
        if name is not None and done >= mark:
            mib = f"{done / 2**20:.1f} MiB"
            of = f" of {total / 2**20:.1f} MiB ({100 * done // total}%)" if total else ""
            log.info("%s: %s%s", name, mib, of)
            mark = done + step


def _fetch_file_url(url: str, part: Path, chunk: int) -> None:
    """file:// URL: a local copy is cheap, so it always restarts."""
    src_path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if not src_path.is_file():
        raise DownloadError(f"{url}: no such file {src_path}; check the --source URL")
    with open(src_path, "rb") as src, open(part, "wb") as out:
        _copy_stream(src, out, chunk)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _fetch_http_once(url: str, part: Path, chunk: int, timeout: float) -> None:
    """One attempt: resume ``part`` from its size if the server honours Range, else restart."""
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "lgkd-download"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # Range past the end: the .part is already complete (or longer than the file).
            m = re.match(r"bytes\s+\*/(\d+)", e.headers.get("Content-Range", ""))
            e.close()
            if m and int(m.group(1)) == offset:
                return
            part.unlink()
            return _fetch_http_once(url, part, chunk, timeout)
        raise
    with resp:
        mode = "wb"
        expected_total = None
        if offset and resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise DownloadError(
                    f"{url}: server answered Range bytes={offset}- with Content-Range "
                    f"{resp.headers.get('Content-Range')!r}; delete {part} and retry"
                )
            mode = "ab"
            if m.group(3) != "*":
                expected_total = int(m.group(3))
            log.info("resuming %s at byte %d", url, offset)
        elif offset:
            log.info("server ignored the Range request for %s; restarting", url)
        length = resp.headers.get("Content-Length")
        if expected_total is None and length is not None and mode == "wb":
            expected_total = int(length)
        with open(part, mode) as out:
            _copy_stream(resp, out, chunk, expected_total, offset if mode == "ab" else 0, url)
    size = part.stat().st_size
    if expected_total is not None and size != expected_total:
        raise DownloadError(f"{url}: got {size} of {expected_total} bytes")


def _fetch(
    url: str,
    dest: Path,
    sha256: str | None,
    chunk: int,
    retries: int,
    timeout: float,
    md5: str | None = None,
):
    """Download to ``dest`` and return its hex SHA-256 (see :func:`download`)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    want = sha256.lower() if sha256 else None
    want_md5 = md5.lower() if md5 else None
    if dest.exists():
        have = sha256_file(dest, chunk)
        if (want is None or have == want) and (want_md5 is None or md5_file(dest) == want_md5):
            return have
        log.warning("%s does not have the expected checksum; downloading again", dest)
        dest.unlink()
    part = _part_path(dest)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme == "file":
        _fetch_file_url(url, part, chunk)
    elif scheme in ("http", "https"):
        for attempt in range(retries + 1):
            try:
                _fetch_http_once(url, part, chunk, timeout)
                break
            except urllib.error.HTTPError as e:
                raise DownloadError(
                    f"{url}: HTTP {e.code} {e.reason}; the file may have moved: pass a mirror "
                    f"with --source NAME=URL"
                ) from e
            except (OSError, http.client.HTTPException, DownloadError) as e:
                if attempt == retries:
                    raise DownloadError(
                        f"{url}: download failed after {retries + 1} attempt(s): {e}; run the "
                        f"same command again to resume from {part}"
                    ) from e
                log.warning("%s: %s; retrying (%d/%d)", url, e, attempt + 1, retries)
                time.sleep(min(2**attempt, 30) * RETRY_DELAY_S)
    else:
        raise DownloadError(f"{url}: unsupported URL scheme {scheme!r} (use http, https or file)")
    have = sha256_file(part, chunk)
    if want is not None and have != want:
        part.unlink()
        raise ChecksumError(
            f"{url}: SHA-256 mismatch: expected {want}, got {have}. The partial file was "
            f"removed; check the URL (--source) or the expected digest (--sha256)."
        )
    if want_md5 is not None and (got := md5_file(part, chunk)) != want_md5:
        part.unlink()
        raise ChecksumError(
            f"{url}: MD5 mismatch: expected {want_md5}, got {got}. The partial file was removed; "
            "check the URL (--source) or the expected digest (--md5)."
        )
    os.replace(part, dest)
    return have


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    chunk: int = 1 << 20,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    md5: str | None = None,
) -> Path:
    """Download ``url`` (http, https or file) to ``dest`` and return ``dest``.

    Bytes go to ``<dest>.part``; an existing ``.part`` is resumed with a Range request (and
    restarted when the server ignores Range). A dropped connection is retried ``retries``
    times, each resuming. With ``sha256`` the digest is checked before the rename; on mismatch
    the ``.part`` is deleted and :class:`ChecksumError` names the URL and both digests. An
    existing ``dest`` with the right digest is reused. ``md5`` is checked the same way.
    """
    _fetch(url, Path(dest), sha256, chunk, retries, timeout, md5)
    return Path(dest)


# -- extraction -------------------------------------------------------------------------------
def _unsafe_name(name: str) -> str | None:
    """Why a member name may not be extracted, or None. Checks both separators."""
    if not name:
        return "has an empty name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "contains a '..' component"
    return None


def _unsafe_link(linkname: str) -> str | None:
    # '..' is refused even when it stays inside lexically: chained links (a -> ".", b -> "a/..")
    # can still escape, and no dataset archive needs it.
    if linkname.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", linkname):
        return f"links to the absolute path {linkname!r} (outside the target)"
    if ".." in re.split(r"[/\\]", linkname):
        return f"links to {linkname!r}, which uses '..' and may leave the target"
    return None


def _check_tar(tf: tarfile.TarFile) -> list[tuple[str, str]]:
    bad = []
    for m in tf.getmembers():
        why = _unsafe_name(m.name)
        if why is None and (m.issym() or m.islnk()):
            why = _unsafe_link(m.linkname)
        if why is None and not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            why = "is a device, FIFO or other special file"
        if why:
            bad.append((m.name, why))
    return bad


def _check_zip(zf: zipfile.ZipFile) -> list[tuple[str, str]]:
    bad = []
    for info in zf.infolist():
        why = _unsafe_name(info.filename)
        mode = info.external_attr >> 16
        if why is None and stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            why = _unsafe_link(target) or "is a symlink (zip symlinks are not supported)"
        elif why is None and mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            why = "is a device, FIFO or other special file"
        if why:
            bad.append((info.filename, why))
    return bad


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise UnsafeArchiveError(f"{archive}: not a tar or zip archive")


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a tar (optionally compressed) or zip ``archive`` into ``target``.

    Every member is checked first; if any has an absolute path, a ``..`` component, a link
    leaving the target, or is a device/FIFO, :class:`UnsafeArchiveError` names it and nothing is
    extracted. Tar extraction additionally uses tarfile's ``data`` filter when available.
    """
    archive, target = Path(archive), Path(target)
    kind = _archive_kind(archive)
    opener = tarfile.open if kind == "tar" else zipfile.ZipFile
    with opener(archive) as af:
        bad = _check_tar(af) if kind == "tar" else _check_zip(af)
        if bad:
            name, why = bad[0]
            more = f" (and {len(bad) - 1} more unsafe members)" if len(bad) > 1 else ""
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} {why}{more}; nothing was extracted. "
                f"The archive is corrupt or malicious: download it again from a trusted source."
            )
        target.mkdir(parents=True, exist_ok=True)
        if kind == "tar" and hasattr(tarfile, "data_filter"):
            af.extractall(target, filter="data")
        else:
            af.extractall(target)


# -- datasets ---------------------------------------------------------------------------------
def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _extract_into(archive: Path, data_root: Path, src: ArchiveSource) -> None:
    """Extract into a fresh staging folder, then move its top-level entries into place.

    Staging keeps a half-extracted archive from mixing with a previous attempt's files; an
    existing entry of the same name (left by an unfinished run) is replaced.
    """
    staging = data_root / f".staging-{src.name}"
    _remove(staging)
    safe_extract(archive, staging)
    dest_dir = data_root / src.extract_to
    dest_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staging.iterdir()):
        if entry.name in _JUNK:
            continue
        final = dest_dir / entry.name
        _remove(final)
        os.replace(entry, final)
    _remove(staging)
    if not (data_root / src.provides).exists():
        raise DownloadError(
            f"{archive} ({src.url}) did not provide {data_root / src.provides}; the archive has "
            f"an unexpected layout: check the --source URL for {src.name!r}"
        )


def _resolve_sources(
    dataset: str, sources: Mapping[str, ArchiveSource | str] | None, include: tuple[str, ...]
) -> list[ArchiveSource]:
    spec = SOURCES[dataset]
    by_name = {s.name: s for s in spec.sources}
    sources = dict(sources or {})
    for name in [*sources, *include]:
        if name not in by_name:
            raise ValueError(
                f"unknown source {name!r} for dataset {dataset!r}; valid: {', '.join(by_name)}"
            )
    out = []
    for name, src in by_name.items():
        over = sources.get(name)
        if isinstance(over, ArchiveSource):
            src = over
        elif isinstance(over, str):
            src = dataclasses.replace(src, url=over)
        if not src.optional or name in include or name in sources:
            out.append(src)
    return out


def prepare_dataset(
    dataset: str,
    data_root: Path,
    sources: Mapping[str, ArchiveSource | str] | None = None,
    keep_archives: bool = False,
    include: tuple[str, ...] = (),
) -> Path:
    """Download and extract ``dataset`` (``voc`` or ``ade``) under ``data_root``; return its root.

    Layout: ``<data_root>/PascalVOC2012/{VOCdevkit/VOC2012, SegmentationClassAug, list}`` or
    ``<data_root>/ADEChallengeData2016/{images,annotations}``. ``sources`` overrides entries of
    :data:`SOURCES` by name with a URL (keeping the known checksum) or a whole
    :class:`ArchiveSource`; ``include`` adds optional sources (``sbd_visualization``). The marker
    ``<root>/.done`` (URLs and SHA-256 of every archive) is written last; when it exists the call
    does nothing.
    """
    if dataset not in SOURCES:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(SOURCES)}")
    data_root = Path(data_root)
    root = data_root / SOURCES[dataset].root
    marker = root / MARKER
    if marker.exists():
        log.info("%s already prepared (%s exists); nothing to do", root, marker)
        return root
    chosen = _resolve_sources(dataset, sources, include)
    downloads = data_root / DOWNLOAD_DIR
    record = {}
    archives = []
    for src in chosen:
        archive = downloads / src.filename
        log.info("downloading %s: %s", src.name, src.url)
        digest = _fetch(src.url, archive, src.sha256, 1 << 20, retries=3, timeout=60.0)
        log.info("extracting %s into %s", archive, data_root / src.extract_to)
        _extract_into(archive, data_root, src)
        record[src.name] = {
            "url": src.url,
            "file": src.filename,
            "sha256": digest,
            "sha256_verified": src.sha256 is not None,
        }
        archives.append(archive)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"dataset": dataset, "sources": record}, sort_keys=True)
    if not keep_archives:
        for archive in archives:
            archive.unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    log.info("%s ready", root)
    return root


# -- command line -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m lgkd_core download``."""
    names = ", ".join(
        f"{d}: {' '.join(s.name for s in spec.sources)}" for d, spec in SOURCES.items()
    )
    parser.add_argument("--dataset", required=True, choices=sorted(SOURCES))
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument(
        "--source",
        action="append",
        metavar="NAME=URL",
        help=f"replace a download location (http(s):// or file://). Names: {names}",
    )
    parser.add_argument(
        "--sha256",
        action="append",
        metavar="NAME=HEX",
        help="expected SHA-256 of an archive ('none' to skip the check)",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="NAME",
        help="also fetch an optional archive (sbd_visualization)",
    )
    parser.add_argument("--keep-archives", action="store_true", help="keep the downloaded files")


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``download`` command."""
    spec = {s.name: s for s in SOURCES[args.dataset].sources}
    urls = parse_pairs(args.source, "--source")
    digests = parse_pairs(args.sha256, "--sha256")
    overrides: dict[str, ArchiveSource] = {}
    for name in {*urls, *digests}:
        if name not in spec:
            raise SystemExit(
                f"--source/--sha256: unknown archive {name!r} for --dataset {args.dataset}; "
                f"valid: {', '.join(spec)}"
            )
        src = spec[name]
        if name in urls:
            src = dataclasses.replace(src, url=urls[name])
        if name in digests:
            value = digests[name]
            if value.lower() != "none" and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
                raise SystemExit(f"--sha256 {name}: {value!r} is not 64 hex digits or 'none'")
            src = dataclasses.replace(src, sha256=None if value.lower() == "none" else value)
        overrides[name] = src
    root = prepare_dataset(
        args.dataset,
        args.data_root,
        sources=overrides,
        keep_archives=args.keep_archives,
        include=tuple(args.include),
    )
    print(root)
    return 0
