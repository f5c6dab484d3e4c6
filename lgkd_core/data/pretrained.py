"""The ImageNet start of step 0: the In-Place ABN ResNet-101 file, its download and MD5 check,
and the values of the ``pretrained:`` setting.

The reference always starts step 0 from the In-Place ABN authors' ImageNet ResNet-101,
``resnet101_iabn_sync.pth.tar`` (MD5 ``1552ae0f3d610108df702135f56bd27b``), which their README
links as a Google Drive file. This project keeps it at
``<data_root>/pretrained/resnet101_iabn_sync.pth.tar`` (:func:`iabn_path`).

``pretrained:`` (workflow setting; ``--pretrained`` of ``python -m lgkd_core train``):

* ``iabn``: that file (the default for VOC and ADE20k). Its MD5 is checked every time step 0
  loads it, as it is for any file of that name.
* ``torchvision``: torchvision's ImageNet weights, from its own cache
  (:mod:`lgkd_core.models.imagenet`).
* ``none``: random weights, with a warning in the train log. It must be written out: an unset
  value is refused for every experiment whose step 0 is trained.
* anything else: the path of an In-Place-ABN-style backbone checkpoint.

Download, ``python -m lgkd_core download-pretrained --data-root D [--source URL] [--md5 HEX]``:
Drive answers a file of this size with an HTML page (its virus-scan warning) whose form leads
to the file. Any source that answers with an HTML page instead of a file is read as such a page:
the link to follow comes from gdown's parser of Drive's pages
(``gdown.download.get_url_from_gdrive_confirmation``, kept up to date with Google's page
changes by its maintainers), and the bytes are then fetched by
:func:`lgkd_core.data.download.download`: into ``<file>.part``, resumed with HTTP ``Range``
after a dropped connection or on the next run, progress in the log, the MD5 checked before the
file gets its final name. gdown's own downloader is not used because it decides that a URL is
a Drive link by its host name (drive.google.com, docs.google.com) and then always requests
``https://drive.google.com/uc?id=...`` itself: its confirmation handling cannot be run against
a local test server (nor a mirror that copies Drive's pages), so the tests could not reach the
code path the real download takes. A mirror (``http(s)://``) or a local copy (``file://`` or a
plain path) is fetched the same way and checked against the same MD5.
"""

from __future__ import annotations

import argparse
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lgkd_core.data.download import ChecksumError, DownloadError, download, md5_file

log = logging.getLogger("lgkd_core.pretrained")

IABN_FILE = "resnet101_iabn_sync.pth.tar"
IABN_MD5 = "1552ae0f3d610108df702135f56bd27b"
IABN_DRIVE_ID = "1oFVSIUYAxa_uNDq2OLkbhyiFmKwnYzpt"
IABN_URL = f"https://drive.google.com/uc?export=download&id={IABN_DRIVE_ID}"
IABN_PAGE = f"https://drive.google.com/file/d/{IABN_DRIVE_ID}/view"  # for a browser
IABN_BACKBONE = "resnet101"
KEYWORDS = ("iabn", "torchvision", "none")
ALLOWED = (
    "iabn (the In-Place ABN ImageNet ResNet-101 under <data_root>/pretrained/, fetched by rule "
    "download_pretrained), torchvision (torchvision's ImageNet weights, full-width "
    "resnet18/34/50/101), none (random weights; must be written out), or the path of a "
    "backbone checkpoint file"
)
MAX_PAGES = 3  # confirmation pages followed before giving up
_PAGE_BYTES = 1 << 20


class PretrainedError(RuntimeError):
    """The pretrained weights could not be fetched; the message says what to do by hand."""


class PretrainedChecksumError(ValueError):
    """A pretrained weights file does not have the expected MD5 (the file is left in place)."""


def iabn_path(data_root: str | Path) -> Path:
    """Where the In-Place ABN ImageNet ResNet-101 lives under ``data_root``."""
    return Path(data_root) / "pretrained" / IABN_FILE


def is_iabn_file(path: str | Path) -> bool:
    """Whether ``path`` names the In-Place ABN ImageNet ResNet-101 (by its file name)."""
    return Path(path).name == IABN_FILE


def _manual_step(target: Path, md5: str) -> str:
    return (
        f"download it by hand from {IABN_PAGE} (a browser passes Drive's virus-scan warning) "
        f"and place it at {target} (MD5 {md5})"
    )


def check_md5(path: str | Path, expected: str = IABN_MD5) -> None:
    """Raise unless ``path`` exists with MD5 ``expected``; never deletes or changes the file."""
    path = Path(path)
    expected = expected.lower()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {path} does not exist: run the download (snakemake rule "
            f"download_pretrained, or python -m lgkd_core download-pretrained --data-root "
            f"{path.parent.parent}), or {_manual_step(path, expected)}"
        )
    actual = md5_file(path)
    if actual != expected:
        raise PretrainedChecksumError(
            f"pretrained weights file {path} has MD5 {actual}, expected {expected}: it is "
            "truncated, corrupt or another file. Delete it and run the download again (snakemake "
            f"rule download_pretrained, or python -m lgkd_core download-pretrained --data-root "
            f"{path.parent.parent}), or {_manual_step(path, expected)}. The file was left as it is."
        )


# -- workflow settings -----------------------------------------------------------------------
def pretrained_flags(value: Any, where: str, dataset: str, backbone: str | None) -> list[str]:
    """``train`` arguments of a step 0 with ``pretrained: value`` (``where`` names the key).

    Raises ConfigError for an unset value (``none`` must be written out) and for a keyword the
    backbone cannot use.
    """
    from lgkd_core.experiments import ConfigError

    if value is None or not str(value).strip():
        raise ConfigError(
            f"{where} is not set (set it for the experiment or its setting, or under "
            f"dataset_defaults.{dataset}.pretrained): say how step 0's backbone starts. "
            f"Allowed: {ALLOWED}"
        )
    value = str(value).strip()
    backbone = backbone or IABN_BACKBONE
    if value == "iabn" and backbone != IABN_BACKBONE:
        raise ConfigError(
            f"{where}: iabn is the ImageNet {IABN_BACKBONE}, but the backbone is {backbone}; "
            f"allowed: {ALLOWED}"
        )
    if value == "torchvision" and "_w" in backbone:
        raise ConfigError(
            f"{where}: torchvision has no ImageNet weights for the reduced-width {backbone}; "
            f"use none or a checkpoint file (allowed: {ALLOWED})"
        )
    return ["--pretrained", value]


def pretrained_input(value: Any, data_root: str | Path) -> str | None:
    """The file a step-0 job with ``pretrained: value`` reads (a workflow input), or None."""
    if value is None or str(value).strip() in ("torchvision", "none", ""):
        return None
    if str(value).strip() == "iabn":
        return str(iabn_path(data_root))
    return str(value)


# -- download --------------------------------------------------------------------------------
def _is_page(resp) -> bool:
    disposition = resp.headers.get("Content-Disposition") or ""
    return resp.headers.get_content_type() == "text/html" and "attachment" not in disposition


def _confirmed_url(url: str, timeout: float) -> str:
    """The URL that serves the file itself: Drive's confirmation pages followed.

    Probes with ``Range: bytes=0-0`` so that a URL serving the file sends one byte, not all.
    """
    from gdown.download import get_url_from_gdrive_confirmation
    from gdown.exceptions import FileURLRetrievalError

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    for _ in range(MAX_PAGES + 1):
        headers = {"User-Agent": "lgkd-download", "Range": "bytes=0-0"}
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            if not _is_page(resp):
                return resp.geturl()
            page_url = resp.geturl()
            page = resp.read(_PAGE_BYTES).decode("utf-8", "replace")
        if resp.status == 206:  # a server that cut the page to the probe's range
            with opener.open(urllib.request.Request(page_url), timeout=timeout) as full:
                page = full.read(_PAGE_BYTES).decode("utf-8", "replace")
        try:
            url = urllib.parse.urljoin(page_url, get_url_from_gdrive_confirmation(page))
        except FileURLRetrievalError as err:
            raise DownloadError(
                f"{page_url} answered with an HTML page that is not Drive's download "
                f"confirmation ({' '.join(str(err).split())})"
            ) from None
        log.info("following Drive's download confirmation to %s", url)
    raise DownloadError(f"{url}: still a confirmation page after {MAX_PAGES} pages")


def _source_url(source: str) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*://", source):
        return source
    return Path(source).expanduser().resolve().as_uri()  # a plain local path


def download_pretrained(
    data_root: str | Path,
    source: str | None = None,
    md5: str | None = None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Fetch the In-Place ABN ImageNet ResNet-101 to :func:`iabn_path` and return that path.

    ``source``: the Drive link (default), a mirror URL, ``file://`` URL or path; ``md5``: the
    expected MD5 (default: the published one). A target that exists with the right MD5 is kept
    (one with another MD5 is removed and fetched again); the bytes go to ``<target>.part``
    (resumed on the next call) and get the final name only once their MD5 matches.
    """
    target = iabn_path(data_root)
    url = _source_url(source or IABN_URL)
    md5 = (md5 or IABN_MD5).lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise ValueError(f"--md5 {md5!r} is not 32 hex digits")
    if target.is_file() and md5_file(target) == md5:
        log.info("%s is present with MD5 %s; nothing to do", target, md5)
        return target
    log.info("downloading %s to %s", url, target)
    try:
        final = _confirmed_url(url, timeout) if url.startswith(("http:", "https:")) else url
        download(final, target, md5=md5, retries=retries, timeout=timeout)
    except ChecksumError as err:
        raise PretrainedError(
            f"the download of {url} for {target} has the wrong checksum ({err}); nothing was "
            f"written to {target}. Check the source (--source, config downloads.pretrained.url) "
            f"and the MD5 (--md5, downloads.pretrained.md5), or {_manual_step(target, md5)}"
        ) from None
    except (DownloadError, urllib.error.URLError, OSError) as err:
        raise PretrainedError(
            f"could not download {url} to {target}: {err}. Run the same command again to resume "
            f"({target}.part is kept), give a mirror with --source (config "
            f"downloads.pretrained.url), or, without internet access here, "
            f"{_manual_step(target, md5)}"
        ) from None
    log.info("%s ready (MD5 %s)", target, md5)
    return target


# -- command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m lgkd_core download-pretrained``."""
    parser.add_argument(
        "--data-root", required=True, type=Path, help="the file goes to DATA_ROOT/pretrained/"
    )
    parser.add_argument(
        "--source",
        help=f"where to fetch {IABN_FILE} from: http(s):// URL, file:// URL or path "
        "(default: the In-Place ABN authors' Google Drive link)",
    )
    parser.add_argument("--md5", help=f"expected MD5 (default {IABN_MD5})")
    parser.add_argument("--retries", type=int, default=3, help="retries after a dropped connection")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``download-pretrained``: prints the file's path; 1 on failure."""
    try:
        path = download_pretrained(args.data_root, args.source, args.md5, retries=args.retries)
    except PretrainedError as err:
        log.error("%s", err)
        return 1
    print(path)
    return 0
