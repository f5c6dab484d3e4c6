"""ImageNet start of step 0: the In-Place ABN file's download (Drive's confirmation page, resume,
MD5), its check where step 0 loads it, torchvision's weights, the ``pretrained:`` values, and the
``init`` record in model.pt, metrics.json and the tables. Loopback only, no internet."""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import re
import socket
import urllib.parse
from pathlib import Path

import pytest
import torch
import yaml

from lgkd_core import experiments as X
from lgkd_core.cli import main as cli_main
from lgkd_core.data import download as dl
from lgkd_core.data import pretrained as P
from lgkd_core.engine.checkpoint import load_model_file
from lgkd_core.engine.evaluate import evaluate
from lgkd_core.engine.released import import_step0
from lgkd_core.engine.trainer import TrainConfig, train
from lgkd_core.models import build_backbone, build_model
from lgkd_core.models.imagenet import init_backbone, torchvision_key
from lgkd_core.report import step_table

from helpers import TINY_TRAIN, LoopbackServer, planned_jobs, snakemake

REPO = Path(__file__).resolve().parents[1]
SMALL = "resnet18_w0.25"
FILE_ID = "standin-file-id"
TINY = {**TINY_TRAIN, "backbone": SMALL, "epochs": 1, "batch_size": 8}


# -- a stand-in for resnet101_iabn_sync.pth.tar ----------------------------------------------
@pytest.fixture(scope="module")
def standin() -> tuple[bytes, str, dict]:
    """(file bytes, MD5, backbone state): the small backbone saved the way In-Place ABN's
    ImageNet files are (``{"state_dict": {"module." + key: tensor}}``, with a classifier)."""
    torch.manual_seed(3)
    body = build_backbone(SMALL, "abn", 8)
    state = {}
    for key, value in body.state_dict().items():
        if value.is_floating_point():
            value = torch.rand_like(value) + 0.5  # positive: a valid running_var too
        else:
            value = value + 7
        state[key] = value
    payload = {f"module.{k}": v for k, v in state.items()}
    payload["module.classifier.fc.weight"] = torch.rand(10, body.out_channels)
    buffer = io.BytesIO()
    torch.save({"state_dict": payload, "epoch": 90}, buffer)
    data = buffer.getvalue()
    return data, hashlib.md5(data).hexdigest(), state


def _corrupt(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]


# -- a loopback server that answers like Google Drive ----------------------------------------
class _Drive(LoopbackServer):
    """``/uc?export=download&id=ID`` answers Drive's virus-scan warning page, whose form leads
    to ``/download?id=ID&export=download&confirm=t&uuid=...``, which serves ``data`` (with Range).

    ``drop_first``: the first request for the whole file gets half of it, then the connection
    is closed. Every request's path and Range header are recorded.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.drop_first = False
        super().__init__()

    @property
    def link(self) -> str:
        return self.url(f"/uc?export=download&id={FILE_ID}")

    def respond(self, h) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query)
        if query.get("id") != [FILE_ID]:
            h.send_error(404)
        elif url.path == "/download" and query.get("confirm") == ["t"]:
            self._file(h, h.headers.get("Range"))
        elif url.path in ("/uc", "/download"):
            self._page(h)
        else:
            h.send_error(404)

    def _page(self, h) -> None:
        action = html.escape(self.url("/download"))
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{v}">'
            for k, v in (("id", FILE_ID), ("export", "download"), ("confirm", "t"),
                         ("uuid", "0b7e-test"))
        )  # fmt: skip
        body = (
            "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>"
            "</head><body>\n<p>Google Drive can't scan this file for viruses.</p>\n"
            f'<form id="download-form" action="{action}" method="get">{hidden}'
            '<input type="submit" value="Download anyway"></form>\n</body></html>\n'
        ).encode()
        h.send_response(200)
        h.send_header("Content-Type", "text/html; charset=utf-8")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _file(self, h, rng: str | None) -> None:
        data = self.data
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        start, end = (int(m[1]), int(m[2] or len(data) - 1)) if m else (0, len(data) - 1)
        end = min(end, len(data) - 1)
        h.send_response(206 if m else 200)
        if m:
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Disposition", f'attachment; filename="{P.IABN_FILE}"')
        body = data[start : end + 1]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if self.drop_first and start == 0 and len(body) == len(data):
            self.drop_first = False
            body = body[: len(body) // 2]
            h.close_connection = True
        h.wfile.write(body)


@pytest.fixture
def drive(standin):
    server = _Drive(standin[0])
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_DELAY_S", 0.0)


# -- download --------------------------------------------------------------------------------
def test_drive_confirmation_is_followed_md5_checked_and_file_loads(
    drive, standin, tmp_path, caplog
):
    data, md5, state = standin
    caplog.set_level(logging.INFO)
    path = P.download_pretrained(tmp_path / "data", source=drive.link, md5=md5)
    assert path == tmp_path / "data" / "pretrained" / P.IABN_FILE
    assert path.read_bytes() == data and not list(path.parent.glob("*.part"))
    # The page first, then the form's target with the confirmation (probed for one byte), then
    # the whole file.
    paths = [urllib.parse.urlsplit(p) for p, _ in drive.requests]
    assert [p.path for p in paths] == ["/uc", "/download", "/download"]
    assert urllib.parse.parse_qs(paths[1].query)["uuid"] == ["0b7e-test"]
    assert drive.requests[2][1] is None
    assert any("100%" in r.getMessage() for r in caplog.records), "progress in the log"
    # Present with the right MD5: nothing is fetched again.
    assert P.download_pretrained(tmp_path / "data", source=drive.link, md5=md5) == path
    assert len(drive.requests) == 3

    model = build_model(SMALL, [16], head_channels=32, output_stride=8)
    init, source = init_backbone(
        model, "iabn", backbone=SMALL, data_root=tmp_path / "data", md5=md5
    )
    assert (init, source) == ("imagenet-iabn", str(path))
    loaded = model.body.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_mirror_file_and_plain_path_sources(standin, tmp_path):
    data, md5, _ = standin
    mirror = tmp_path / "mirror" / "copy.pth.tar"
    mirror.parent.mkdir()
    mirror.write_bytes(data)
    for i, source in enumerate((mirror.as_uri(), str(mirror))):
        path = P.download_pretrained(tmp_path / f"d{i}", source=source, md5=md5)
        assert path.read_bytes() == data


def test_corrupt_download_is_refused_and_nothing_is_written(drive, standin, tmp_path):
    data, md5, _ = standin
    drive.data = _corrupt(data)
    target = tmp_path / "data" / "pretrained" / P.IABN_FILE
    with pytest.raises(P.PretrainedError) as err:
        P.download_pretrained(tmp_path / "data", source=drive.link, md5=md5)
    message = str(err.value)
    for word in (str(target), md5, hashlib.md5(drive.data).hexdigest(), P.IABN_PAGE):
        assert word in message, (word, message)
    assert not target.exists() and not list(target.parent.glob("*.part"))


def test_interrupted_download_resumes_from_the_part_file(drive, standin, tmp_path):
    data, md5, _ = standin
    drive.drop_first = True
    target = tmp_path / "data" / "pretrained" / P.IABN_FILE
    with pytest.raises(P.PretrainedError, match="again to resume"):
        P.download_pretrained(tmp_path / "data", source=drive.link, md5=md5, retries=0)
    part = target.with_name(target.name + ".part")
    assert not target.exists() and part.read_bytes() == data[: len(data) // 2]
    P.download_pretrained(tmp_path / "data", source=drive.link, md5=md5, retries=0)
    assert target.read_bytes() == data and not part.exists()
    last_path, last_range = drive.requests[-1]
    assert last_path.startswith("/download?") and last_range == f"bytes={len(data) // 2}-"


def test_offline_error_names_url_target_and_the_manual_step(tmp_path, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/uc?export=download&id={FILE_ID}"
    target = tmp_path / "pretrained" / P.IABN_FILE
    with pytest.raises(P.PretrainedError) as err:
        P.download_pretrained(tmp_path, source=url)
    message = str(err.value)
    for word in (url, str(target), "by hand", P.IABN_PAGE, "place it at"):
        assert word in message, (word, message)
    assert not target.exists()
    caplog.set_level(logging.ERROR)
    argv = ["download-pretrained", "--data-root", str(tmp_path), "--source", url]
    assert cli_main(argv) == 1
    assert any(url in r.getMessage() and "by hand" in r.getMessage() for r in caplog.records)


# -- training: the check where step 0 loads, the warning, the init record ---------------------
@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(seed=0, n_train=40, n_val=16)


def _cfg(data_root: Path, out: Path, step: int, **kw) -> TrainConfig:
    kw = {"method": "LGKD", **TINY, **kw}
    return TrainConfig(dataset="synthetic", task="15-5", step=step, data_root=data_root, out=out,
                       lr=0.05, **kw)  # fmt: skip


def test_corrupt_file_is_refused_at_load_and_left_in_place(data_root, standin, tmp_path):
    data, md5, _ = standin
    root = tmp_path / "data"
    root.mkdir()
    (root / "synthetic").symlink_to(data_root / "synthetic", target_is_directory=True)
    target = P.iabn_path(root)
    target.parent.mkdir()
    target.write_bytes(_corrupt(data))
    before = target.stat()
    out = tmp_path / "run" / "step0"
    with pytest.raises(P.PretrainedChecksumError) as err:
        train(_cfg(root, out, 0, pretrained="iabn", pretrained_md5=md5))
    message = str(err.value)
    for word in (str(target), md5, hashlib.md5(_corrupt(data)).hexdigest(), "Delete it",
                 "download_pretrained", P.IABN_PAGE):  # fmt: skip
        assert word in message, (word, message)
    assert target.read_bytes() == _corrupt(data) and target.stat().st_mtime_ns == before.st_mtime_ns
    assert not (tmp_path / "run").exists(), "no outputs for a refused start"
    # A missing file says how to get it.
    target.unlink()
    with pytest.raises(FileNotFoundError, match="download-pretrained"):
        train(_cfg(root, out, 0, pretrained="iabn", pretrained_md5=md5))


@pytest.mark.slow
def test_init_is_recorded_and_carried_through_the_chain(data_root, standin, tmp_path, caplog):
    data, md5, _ = standin
    target = P.iabn_path(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    (tmp_path / "synthetic").symlink_to(data_root / "synthetic", target_is_directory=True)

    # Random weights: allowed when written out, never silent.
    caplog.set_level(logging.INFO)
    random0 = train(_cfg(tmp_path, tmp_path / "random" / "step0", 0, pretrained="none"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("RANDOM weights" in r.getMessage() for r in warnings), warnings
    assert load_model_file(random0)["init"] == "random"

    # The In-Place ABN file (the stand-in, by its MD5).
    model0 = train(_cfg(tmp_path, tmp_path / "iabn" / "step0", 0, pretrained="iabn",
                        pretrained_md5=md5))  # fmt: skip
    meta0 = load_model_file(model0)
    assert meta0["init"] == "imagenet-iabn" and meta0["init_source"] == str(target)
    model1 = train(_cfg(tmp_path, tmp_path / "iabn" / "step1", 1, teacher=model0, method="FT"))
    assert load_model_file(model1)["init"] == "imagenet-iabn"  # carried from the teacher
    metrics = []
    for step, model in enumerate((model0, model1)):
        path = tmp_path / "iabn" / f"step{step}" / "metrics.json"
        evaluate("synthetic", "15-5", step, tmp_path, model, path, crop_size=64, device="cpu",
                 workers=0)  # fmt: skip
        assert json.loads(path.read_text())["init"] == "imagenet-iabn"
        metrics.append(path)
    assert list(step_table(metrics)["init"]) == ["imagenet-iabn"] * 2

    # A released step 0 (here a project model.pt) imported by step0_checkpoint: "checkpoint".
    arch = {"backbone": SMALL, "head_channels": 32, "output_stride": 8}
    out = import_step0(str(model0), "synthetic", "15-5", tmp_path / "imp.pt", arch, tmp_path)
    imported = load_model_file(out)
    assert imported["init"] == "checkpoint" and imported["source_init"] == "imagenet-iabn"


# -- torchvision's weights ---------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])  # basic and bottleneck blocks
def test_torchvision_weights_from_the_cache_map_onto_every_parameter(
    backbone, tmp_path, monkeypatch
):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = {"resnet18": torchvision.models.ResNet18_Weights,
               "resnet50": torchvision.models.ResNet50_Weights}[backbone].IMAGENET1K_V1  # fmt: skip
    # A randomly initialised torchvision network of that architecture, with distinct values
    # everywhere, in torchvision's cache under the enum's file name: loaded from there offline.
    torch.manual_seed(0)
    reference = getattr(torchvision.models, backbone)(weights=None)
    with torch.no_grad():
        for value in reference.state_dict().values():
            value.copy_(torch.rand_like(value) + 1 if value.is_floating_point() else value + 5)
    cache = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cache.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cache)

    model = build_model(backbone, [16], head_channels=32, output_stride=16)
    init, source = init_backbone(model, "torchvision", backbone=backbone, data_root=tmp_path)
    assert (init, source) == ("imagenet-torchvision", str(weights))
    body = model.body.state_dict()
    mapped = set()
    for key, value in reference.state_dict().items():
        name = torchvision_key(key)
        if name is None:
            assert key.startswith("fc.")
            continue
        assert torch.equal(body[name], value), (key, name)
        mapped.add(name)
    assert mapped == set(body), "every backbone tensor comes from torchvision's weights"


def test_torchvision_refuses_reduced_width(tmp_path):
    model = build_model(SMALL, [16], head_channels=32, output_stride=8)
    with pytest.raises(ValueError, match="full width"):
        init_backbone(model, "torchvision", backbone=SMALL, data_root=tmp_path)


# -- configuration and workflow ----------------------------------------------------------------
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def test_unset_pretrained_is_refused_naming_the_key():
    cfg = json.loads(json.dumps(CONFIG))
    cfg["dataset_defaults"]["voc"]["pretrained"] = None
    with pytest.raises(X.ConfigError) as err:
        X.resolve(cfg)
    for word in (".pretrained", "dataset_defaults.voc.pretrained", "iabn", "torchvision", "none"):
        assert word in str(err.value), (word, str(err.value))
    cfg = json.loads(json.dumps(CONFIG))
    cfg["experiments"]["mine"] = {"dataset": "synthetic", "task": "15-1", "method": "FT",
                                  "pretrained": None}  # fmt: skip
    with pytest.raises(X.ConfigError, match=r"experiments\.mine\.pretrained is not set"):
        X.resolve(cfg)
    cfg["experiments"]["mine"]["pretrained"] = "iabn"  # a ResNet-101 for resnet18_w0.25
    with pytest.raises(X.ConfigError, match=r"experiments\.mine\.pretrained: iabn"):
        X.resolve(cfg)
    # A released step 0 is not trained: it needs no pretrained setting.
    cfg["experiments"]["mine"].update(pretrained=None, step0_checkpoint="released.pth")
    assert X.resolve(cfg)["mine"].members[0].shared_step0 is None


def test_dry_run_schedules_the_download_for_step0(tmp_path):
    mirror = {"downloads": {"pretrained": {"url": "file:///mirror/r101.pth.tar", "md5": "ab" * 16}}}
    (tmp_path / "mirror.yaml").write_text(yaml.safe_dump(mirror))
    args = ["-n", "-p", "results/voc_15-1/table.csv", "--configfile", str(tmp_path / "mirror.yaml")]
    proc = snakemake(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    file = f"data/pretrained/{P.IABN_FILE}"
    (download,) = [j for j in jobs if j["rule"] == "download_pretrained"]
    assert download["output"] == [file]
    assert f"--source file:///mirror/r101.pth.tar --md5 {'ab' * 16}" in download["block"]
    trains = [j for j in jobs if j["rule"].startswith("train")]
    (step0,) = [j for j in trains if j["output"][0].endswith("step0/model.pt")]
    assert file in step0["input"]
    assert (
        "--pretrained iabn" in step0["block"] and f"--pretrained-md5 {'ab' * 16}" in step0["block"]
    )
    assert all(file not in j["input"] for j in trains if j is not step0)
