"""Parity with the reference implementation (Ze-Yang/LGKD) and its released checkpoints.

* Logits: ``fixtures/reference_logits/`` holds the reference model's logits (ResNet-101,
  DeepLabV3, classifiers [16, 1]) for a fixed input, with weights filled from their key names
  by ``deterministic_state`` (the generator uses the same rules; see the README there). The
  project's ``abn`` layers run the same operations as the reference's ``ABN`` layers, so the
  logits are bit-identical where the fixture was made (same torch, CPU kind, thread count);
  the compiled ``InPlaceABN`` kernels differ by float32 accumulation error.
* Checkpoints: files in the exact format of the reference's ``save_ckpt`` (the LGKD v1.0 and
  PLOP step-0 releases) and of the In-Place ABN ImageNet weights load, keep every weight, and
  evaluate through the command line.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from lgkd_core.data.synthetic import synthesize
from lgkd_core.engine.checkpoint import load_model_file
from lgkd_core.engine.inputs import eval_loader
from lgkd_core.engine.released import import_step0
from lgkd_core.engine.teacher import build_from_file
from lgkd_core.models import build_model
from lgkd_core.tasks import get_task

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference_logits" / "resnet101_voc.pt"
ABN_TOL = 2e-5  # eval logits elsewhere than the fixture's machine (measured: 1.4e-6)
TRAIN_TOL = 1e-3  # training mode: batch statistics over 2 values per channel amplify rounding
IABN_TOL = 5e-4  # InPlaceABN's kernels (measured: 1.8e-4, 3.6e-4 on the large input)
SMALL = {"backbone": "resnet18_w0.25", "head_channels": 32}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# -- deterministic weights: the same rules as the fixture's generator ---------------------------
def key_generator(name: str) -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(seed)


def uniform(name: str, shape, std: float, mean: float = 0.0) -> torch.Tensor:
    """Uniform with ``mean`` and ``std``, seeded by ``name`` (``torch.rand``: exact bits)."""
    u = torch.rand(tuple(shape), generator=key_generator(name), dtype=torch.float32)
    return (u * 2 - 1) * (std * math.sqrt(3)) + mean


def deterministic_state(template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Values for every key of ``template``, each from its own name.

    Convolutions: std sqrt(1.25 / fan_in); norm layers: weight ~1 (0.2 on ``bn3``, the end of
    each residual branch, so 33 blocks keep activations of order 1), bias, running_mean ~0,
    running_var ~1. Logits come out of order 1.
    """
    out = {}
    for key, ref in template.items():
        module, leaf = key.rsplit(".", 1)
        shape = tuple(ref.shape)
        is_norm = f"{module}.running_var" in template
        if leaf == "num_batches_tracked":
            out[key] = torch.randint(1, 10**6, (), generator=key_generator(key), dtype=torch.long)
        elif leaf == "running_mean":
            out[key] = uniform(key, shape, 0.1)
        elif leaf == "running_var":
            out[key] = uniform(key, shape, 0.25, mean=1.0)
        elif is_norm and leaf == "weight":
            scale = 0.2 if module.endswith(".bn3") else 1.0
            out[key] = uniform(key, shape, 0.1 * scale, mean=scale)
        elif leaf == "weight":
            out[key] = uniform(key, shape, math.sqrt(1.25 / math.prod(shape[1:])))
        elif leaf == "bias":
            out[key] = uniform(key, shape, 0.1)
        else:
            raise KeyError(f"no rule for {key}")
    return out


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every key and the bytes of its tensor, in key order."""
    h = hashlib.sha256()
    for key, t in state.items():
        h.update(key.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def model_with(state: dict, classes: list[int], **kw) -> nn.Module:
    model = build_model(classes_per_step=classes, **{"backbone": "resnet101", **kw})
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-size and output-stride logits, both contiguous NCHW."""
    logits, feats = model(x.clone(), return_features=True)
    return logits.contiguous(), feats.logits_small.contiguous()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The fixture's thread count: convolution results depend on it at the last bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=True)


@pytest.fixture(scope="module")
def same_machine(reference) -> bool:
    """Whether this run can reproduce the fixture's float32 rounding bit for bit."""
    return (
        reference["torch"] == str(torch.__version__)
        and reference["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        and reference["threads"] == torch.get_num_threads()
        and _cpu_vendor() == FIXTURE_CPU_VENDOR
    )


# The fixture was computed on an Intel Xeon. Another vendor's CPU with the same instruction set
# (an AMD EPYC reports AVX512 too) runs other kernels and differs in the last bits (1e-6 seen).
FIXTURE_CPU_VENDOR = "GenuineIntel"


def _cpu_vendor() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    return ""


@pytest.fixture(scope="module")
def resnet101_state(reference) -> dict[str, torch.Tensor]:
    """Deterministic ResNet-101 weights with classifiers [16, 1], as in the fixture."""
    state = deterministic_state(build_model("resnet101", [16, 1]).state_dict())
    assert list(state) == reference["keys"]
    assert fingerprint(state) == reference["fingerprint"], "the weight rules drifted"
    return state


def assert_parity(mine: torch.Tensor, ref: torch.Tensor, exact: bool, tol: float) -> float:
    diff = max_abs(mine, ref)
    if exact:
        assert torch.equal(mine, ref), f"not bit-identical: max abs {diff:.3g}"
    assert diff <= tol, f"max abs {diff:.3g} > {tol}"
    return diff


# -- logits parity ------------------------------------------------------------------------------
def test_reference_key_list_matches_the_recorded_reference_shapes(reference):
    recorded = json.loads((FIXTURES / "reference_resnet101_keys.json").read_text())["keys"]
    assert reference["keys"] == [k for k, _ in recorded]


@pytest.fixture(scope="module")
def abn_model(resnet101_state) -> nn.Module:
    return model_with(resnet101_state, [16, 1])


@pytest.fixture(scope="module")
def abn_outputs(reference, abn_model) -> tuple[torch.Tensor, torch.Tensor]:
    return logits_of(abn_model, reference["input"])


def test_abn_logits_equal_the_reference_abn_logits(reference, abn_outputs, same_machine):
    x, ref = reference["input"], reference["abn"]
    assert x.shape == (2, 3, 64, 48) and ref["logits"].shape == (2, 17, 64, 48)
    logits, small = abn_outputs
    assert_parity(small, ref["logits_small"], same_machine, ABN_TOL)
    assert_parity(logits, ref["logits"], same_machine, ABN_TOL)


@pytest.fixture(scope="module")
def large_input(reference) -> torch.Tensor:
    """(1, 3, 320, 304): every ASPP rate reaches inside the map (20x19 at OS16, 40x38 at OS8)."""
    x = uniform("input_large", reference["large_input_shape"], 1.0)
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == reference["large_input_sha256"]
    return x


@pytest.fixture(scope="module")
def large_small_logits(abn_model, large_input) -> torch.Tensor:
    return logits_of(abn_model, large_input)[1]


def test_abn_logits_within_float32_error_of_inplace_abn(reference, abn_outputs, large_small_logits):
    logits, small = abn_outputs
    ref = reference["inplace_abn"]
    assert max_abs(small, ref["logits_small"]) <= IABN_TOL
    assert max_abs(logits, ref["logits"]) <= IABN_TOL
    assert max_abs(large_small_logits, ref["large_logits_small"]) <= IABN_TOL
    assert float(ref["large_logits_small"].abs().max()) > 1  # the scale it is within


def test_abn_variants_equal_the_reference(
    reference, resnet101_state, abn_model, large_input, large_small_logits, same_machine
):
    """The large input at output strides 16 and 8, a pooling window smaller than the map, and
    training mode."""
    x, ref = reference["input"], reference["abn"]
    assert_parity(large_small_logits, ref["large_logits_small"], same_machine, ABN_TOL)
    os8 = model_with(resnet101_state, [16, 1], output_stride=8)
    large_os8 = logits_of(os8, large_input)[1]
    assert_parity(large_os8, ref["large_os8_logits_small"], same_machine, ABN_TOL)
    abn_model.head.pooling_size = 2
    try:
        small = logits_of(abn_model, x)[1]
    finally:
        abn_model.head.pooling_size = 32
    assert_parity(small, ref["pool2_logits_small"], same_machine, ABN_TOL)
    train = copy.deepcopy(abn_model).train()
    assert_parity(logits_of(train, x)[1], ref["train_logits_small"], same_machine, TRAIN_TOL)


@pytest.mark.skipif(
    importlib.util.find_spec("inplace_abn") is None,
    reason="inplace_abn is not installed (optional; see README 'GPU installs')",
)
def test_iabn_kind_matches_the_reference_inplace_abn(reference, resnet101_state, large_input):
    model = model_with(resnet101_state, [16, 1], norm="iabn")
    logits, _ = logits_of(model, reference["input"])
    assert max_abs(logits, reference["inplace_abn"]["logits"]) <= IABN_TOL
    assert max_abs(logits, reference["abn"]["logits"]) <= IABN_TOL
    large = logits_of(model, large_input)[1]
    assert max_abs(large, reference["inplace_abn"]["large_logits_small"]) <= IABN_TOL


# -- released checkpoints -----------------------------------------------------------------------
class _Numpy1Scalar:
    """Stands for numpy's scalar constructor under its numpy 1.x name."""

    def __call__(self, *args):
        raise AssertionError("never called: only pickled by name")


_NUMPY1_SCALAR = _Numpy1Scalar()


def _save_numpy1_name(pickler, obj) -> None:
    pickler.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
    pickler.memoize(obj)


class Numpy1Pickler(pickle._Pickler):
    """Pickles numpy float64 scalars byte for byte as numpy 1.x did (checked against 1.26)."""

    dispatch: ClassVar[dict] = {**pickle._Pickler.dispatch, _Numpy1Scalar: _save_numpy1_name}

    def reducer_override(self, obj):
        if type(obj) is np.float64:
            return _NUMPY1_SCALAR, (obj.dtype, obj.tobytes())
        return NotImplemented


NUMPY1_PICKLE = types.ModuleType("numpy1_pickle")
NUMPY1_PICKLE.Pickler = Numpy1Pickler


def reference_optimizer_state(state: Mapping[str, torch.Tensor]) -> dict:
    """``optimizer.state_dict()`` of the reference's step-0 SGD (body, head, classifier groups;
    momentum 0.9, Nesterov) after one step; only the classifier has momentum buffers here."""
    groups = {"body.": [], "head.": [], "cls.": []}
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in ("weight", "bias") and "running" not in key:
            prefix = key.split(".")[0] + "."
            param = nn.Parameter(value.clone() if prefix == "cls." else value)
            if prefix == "cls.":
                param.grad = torch.ones_like(param)
            groups[prefix].append(param)
    params = [{"params": p, "weight_decay": 1e-4} for p in groups.values()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)
    optimizer.step()
    saved = optimizer.state_dict()
    for group in saved["param_groups"]:
        group["initial_lr"] = 0.01
    return saved


# The reference's PolyLR state at the end of 30 epochs (``__dict__`` less the optimizer).
POLY_LR_STATE = {"max_iters": 9930, "power": 0.9, "base_lrs": [0.01] * 3, "last_epoch": 9930,
                 "_step_count": 9931, "verbose": False, "_get_lr_called_within_step": False,
                 "_last_lr": [0.0] * 3}  # fmt: skip


def write_reference_checkpoint(path: Path, state: Mapping[str, torch.Tensor], numpy1: bool) -> Path:
    """What the reference's ``save_ckpt`` writes: the DDP model's state (``module.``), optimizer,
    poly scheduler, the best validation mIoU (a numpy float64: its metrics are numpy) and the
    trainer state. ``numpy1``: pickled with numpy 1.x's names, as the 2023 releases were."""
    checkpoint = {
        "epoch": 30,
        "model_state": OrderedDict((f"module.{k}", v) for k, v in state.items()),
        "optimizer_state": reference_optimizer_state(state),
        "scheduler_state": POLY_LR_STATE,
        "best_score": np.float64(0.7743),
        "trainer_state": {"regularizer": None},
    }
    torch.save(checkpoint, path, pickle_module=NUMPY1_PICKLE if numpy1 else pickle)
    return path


def step0_state(template_arch: dict, num_classes: int) -> dict[str, torch.Tensor]:
    model = build_model(classes_per_step=[num_classes], **template_arch)
    return deterministic_state(model.state_dict())


# file, dataset, task, classes at step 0, body, logits compared with (ResNet-101 runs are slow:
# the 15-x one with the reference's logits, the ADE one on its weights alone).
RELEASES = [
    ("15-x-voc.pth", "voc", "15-1", 16, "resnet101", "reference"),
    ("100-50-ade.pth", "ade", "100-50", 101, "resnet101", None),
    ("19-1-voc.pth", "voc", "19-1", 20, "small", "direct"),
    ("100-10-ade.pth", "ade", "100-10", 101, "small", "direct"),
    ("50-ade.pth", "ade", "50-50", 51, "small", "direct"),
]


def test_reference_checkpoints_need_numpy_scalars_allowed(tmp_path):
    """The releases' ``best_score`` is a numpy float64: plain weights_only loading refuses it."""
    state = step0_state(SMALL, 16)
    for numpy1, name in ((True, "numpy.core.multiarray.scalar"), (False, "multiarray.scalar")):
        path = write_reference_checkpoint(tmp_path / f"{numpy1}.pth", state, numpy1)
        with pytest.raises(pickle.UnpicklingError, match=name):
            torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    ("filename", "dataset", "task_name", "num_classes", "body", "logits"),
    RELEASES,
    ids=[r[0] for r in RELEASES],
)
def test_released_step0_checkpoint_imports_and_keeps_its_weights(
    tmp_path, reference, resnet101_state, same_machine, filename, dataset, task_name,
    num_classes, body, logits,
):  # fmt: skip
    if body == "resnet101":  # the released architecture, with the fixture's body weights
        arch = {"backbone": "resnet101", "head_channels": 256}
        cls = {
            "cls.0.weight": torch.empty(num_classes, 256, 1, 1),
            "cls.0.bias": torch.empty(num_classes),
        }
        state = {k: v for k, v in resnet101_state.items() if not k.startswith("cls.")}
        state.update(deterministic_state(cls))
    else:  # the same file layout around a small body
        arch = dict(SMALL)
        state = step0_state(arch, num_classes)
    src = write_reference_checkpoint(tmp_path / filename, state, numpy1=dataset == "voc")
    task = get_task(dataset, task_name)
    out = tmp_path / "step0" / "model.pt"
    assert import_step0(str(src), dataset, task_name, out, arch, tmp_path) == out

    payload = load_model_file(out)
    assert payload["classes_per_step"] == [num_classes] == task.classes_per_step(0)
    assert payload["order"] == list(range(num_classes)) and payload["step"] == 0
    assert list(payload["model_state"]) == list(state)
    for key, value in state.items():
        assert torch.equal(payload["model_state"][key], value), key
    if logits is None:
        return
    imported, _ = build_from_file(out, task, 0, {**arch, "norm": "abn"}, torch.device("cpu"))
    mine = logits_of(imported.eval(), reference["input"])[0]
    if logits == "reference":  # the step-0 classifier of the fixture: its first 16 channels
        assert_parity(mine, reference["abn"]["logits"][:, :16], same_machine, ABN_TOL)
    else:
        direct = model_with(state, [num_classes], **arch)
        assert torch.equal(mine, logits_of(direct, reference["input"])[0])


def test_imagenet_inplace_abn_resnet101_initialises_the_backbone(tmp_path, resnet101_state):
    """``resnet101_iabn_sync.pth.tar``: the In-Place ABN ImageNet training script's checkpoint
    (``module.`` keys, ``classifier.fc``, no ``num_batches_tracked``: written before it existed),
    built from the reference's key list."""
    recorded = json.loads((FIXTURES / "reference_resnet101_keys.json").read_text())["keys"]
    body = {
        k.removeprefix("body."): resnet101_state[k]
        for k, _ in recorded
        if k.startswith("body.") and not k.endswith("num_batches_tracked")
    }
    fc = deterministic_state({"classifier.fc.weight": torch.empty(1000, 2048),
                              "classifier.fc.bias": torch.empty(1000)})  # fmt: skip
    state_dict = OrderedDict((f"module.{k}", v) for k, v in {**body, **fc}.items())
    path = tmp_path / "resnet101_iabn_sync.pth.tar"
    optimizer = {"state": {}, "param_groups": []}
    torch.save({"epoch": 90, "arch": "resnet101", "state_dict": state_dict,
                "best_prec1": 77.07, "optimizer": optimizer}, path)  # fmt: skip

    model = build_model("resnet101", [16], pretrained=path)
    before = build_model("resnet101", [16]).body.state_dict()
    for key, value in model.body.state_dict().items():
        expected = before[key] if key.endswith("num_batches_tracked") else body[key]
        assert torch.equal(value, expected), key
    assert len(before) == len(body) + sum(k.endswith("num_batches_tracked") for k in before)


# -- the command line: import-step0 then evaluate -----------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "lgkd_core", *args],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_import_then_evaluate_follows_the_reference_protocol(tmp_path):
    """Step 0 of synthetic 15-1 in the released format -> ``import-step0`` -> ``evaluate``:
    the metrics are those of the file's weights on the step's validation images (future classes
    as background), IoU means over the classes present, as the reference computes them."""
    data = tmp_path / "data"
    synthesize(data / "synthetic", seed=3, n_train=8, n_val=8, size=64, workers=1)
    task = get_task("synthetic", "15-1")
    loader = eval_loader("synthetic", data, task, 0, 64, 4, 0, 1, 0)
    state = step0_state(SMALL, 16)
    # A random network predicts nearly one class everywhere: centring the classifier's biases
    # on these images spreads its predictions over the classes.
    with torch.no_grad():
        logits = torch.cat([model_with(state, [16], **SMALL)(images) for images, _ in loader])
    state["cls.0.bias"] = state["cls.0.bias"] - logits.mean(dim=(0, 2, 3))
    src = write_reference_checkpoint(tmp_path / "15-x-synthetic.pth", state, numpy1=True)
    model_pt = tmp_path / "released" / "step0" / "model.pt"
    metrics = tmp_path / "released" / "step0" / "metrics.json"
    arch = ["--backbone", SMALL["backbone"], "--head-channels", str(SMALL["head_channels"])]
    run_cli("import-step0", "--source", str(src), "--dataset", "synthetic", "--task", "15-1",
            "--out", str(model_pt), *arch)  # fmt: skip
    run_cli("evaluate", "--dataset", "synthetic", "--task", "15-1", "--step", "0",
            "--data-root", str(data), "--model", str(model_pt), "--out", str(metrics),
            "--crop-size", "64", "--batch-size", "4", "--workers", "0",
            "--device", "cpu")  # fmt: skip
    result = json.loads(metrics.read_text())

    model = model_with(state, [16], **SMALL)
    cm = np.zeros((16, 16), dtype=np.int64)
    for images, labels in loader:
        with torch.no_grad():
            pred = model(images).argmax(dim=1).numpy().ravel()
        gt = labels.numpy().ravel()
        assert set(np.unique(gt)) <= set(range(16)) | {255}
        keep = gt != 255
        cm += np.bincount(gt[keep] * 16 + pred[keep], minlength=256).reshape(16, 16)
    assert result["num_images"] == len(loader.dataset) > 0
    assert np.array_equal(np.array(result["confusion_matrix"]), cm)
    present = cm.sum(axis=1) > 0
    assert present.sum() > 2 and (cm.sum(axis=0) > 0).sum() >= 8
    with np.errstate(invalid="ignore"):  # 0/0 for classes neither present nor predicted
        iou = np.diag(cm) / (cm.sum(axis=1) + cm.sum(axis=0) - np.diag(cm))
    summary = result["summary"]
    assert summary["background"] == pytest.approx(iou[0])
    assert summary["old"] == pytest.approx(iou[1:][present[1:]].mean())
    assert summary["all"] == pytest.approx(iou[present].mean())
    assert summary["all"] > 0
