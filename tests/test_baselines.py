"""The baselines' losses and regularisers against direct computations of their formulas.

LwF-MC's one-hot BCE and sigmoid distillation are checked against element-by-element numpy
loops; EWC's Fisher, PI's path integral and RW's score against hand-iterated updates on a tiny
parameter dict; the penalty's analytic gradient against autograd; ``python -m lgkd_core
methods`` parses as CSV with the resolved weights.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch

from lgkd_core import cli
from lgkd_core.losses.bce import bce_with_ignore
from lgkd_core.losses.icarl import icarl_distillation
from lgkd_core.losses.objective import step_losses
from lgkd_core.losses.regularizers import (
    FisherEMA,
    PathIntegral,
    RiemannianWalk,
    add_penalty_grad,
    importance_weights,
    normalize,
    penalty,
)
from lgkd_core.methods import PRESETS, get_method


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _bce(z: float, t: float) -> float:
    """-t log s(z) - (1 - t) log(1 - s(z)), with log(1 - s(z)) = log s(-z)."""
    return -t * _log_sigmoid(z) - (1 - t) * _log_sigmoid(-z)


# -- LwF-MC ------------------------------------------------------------------------------------
def _bce_loop(z: np.ndarray, y: np.ndarray, ignore: int = 255) -> float:
    b, c = z.shape[:2]
    total, count = 0.0, 0
    for i in range(b):
        for idx in np.ndindex(*z.shape[2:]):
            count += 1
            if y[(i, *idx)] == ignore:
                continue
            for k in range(c):
                total += _bce(float(z[(i, k, *idx)]), 1.0 if y[(i, *idx)] == k else 0.0)
    return total / count


@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 4, 7)], ids=["image", "points"])
def test_bce_with_ignore_matches_a_loop_over_pixels_and_channels(shape):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(*shape, generator=g) * 6  # large logits: the stable form matters
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    y.view(-1)[::4] = 255
    got = bce_with_ignore(z, y)
    assert got.dtype == torch.float32 and got.dim() == 0
    np.testing.assert_allclose(float(got), _bce_loop(z.double().numpy(), y.numpy()), rtol=1e-5)
    # valid_pixels reduction: the same sum over the labelled pixels only.
    valid = int((y != 255).sum())
    np.testing.assert_allclose(
        float(bce_with_ignore(z, y, reduction="valid_pixels")),
        _bce_loop(z.double().numpy(), y.numpy()) * y.numel() / valid,
        rtol=1e-5,
    )


def test_bce_with_ignore_equals_torch_bce_on_a_manual_one_hot():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 6, 5, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 6, (2, 5, 5), generator=g)
    y[0, :2] = 255
    onehot = torch.zeros(2, 6, 5, 5)
    for i, r, c in np.ndindex(2, 5, 5):
        if y[i, r, c] != 255:
            onehot[i, y[i, r, c], r, c] = 1.0
    per = torch.nn.functional.binary_cross_entropy_with_logits(z, onehot, reduction="none")
    expected = (per.sum(1) * (y != 255)).mean()
    got = bce_with_ignore(z, y)
    torch.testing.assert_close(got, expected)
    (ga,) = torch.autograd.grad(got, z)
    (gb,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(ga, gb)


def test_icarl_distillation_matches_a_loop():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 5, 3, 4, generator=g) * 3
    t = torch.randn(2, 3, 3, 4, generator=g) * 3
    sn, tn = s.double().numpy(), t.double().numpy()
    total = 0.0
    for idx in np.ndindex(*tn.shape):
        total += _bce(float(sn[idx]), 1 / (1 + math.exp(-float(tn[idx]))))
    expected = 3 * total / tn.size  # C_old * mean over B, C_old, H, W
    np.testing.assert_allclose(float(icarl_distillation(s, t)), expected, rtol=1e-5)


def test_lwf_mc_objective_composes_bce_and_ten_times_icarl():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 6, 8, 8, generator=g, requires_grad=True)
    t = torch.randn(2, 4, 8, 8, generator=g)
    y = torch.randint(0, 6, (2, 8, 8), generator=g)
    y[y < 4] = 0
    y[:, 0] = 255
    method = get_method("LwF-MC", "voc", "15-5")
    assert (method.ce_type, method.icarl, method.kd_type) == ("bce", 10.0, None)
    out = step_losses(method, y, s, teacher_logits=t, num_old=4, num_seen=6, num_new=2)
    assert set(out) == {"ce", "icarl", "total"}
    np.testing.assert_allclose(
        float(out["ce"].detach()), _bce_loop(s.detach().double().numpy(), y.numpy())
    )
    torch.testing.assert_close(out["icarl"], 10 * icarl_distillation(s, t))
    out["total"].backward()
    assert s.grad[:, 4:].abs().sum() > 0  # new channels: BCE only


def test_mib_lgkd_is_unbiased_ce_plus_lgkd():
    m = get_method("MiB+LGKD", "voc", "15-5")
    assert (m.ce_type, m.kd_type, m.loss_kd, m.init_balanced) == ("unce", "lgkd", 1.0, True)
    assert (m.prev_kd, m.novel_kd) == (5.0, 1.0)
    assert not m.pod and m.pseudo is None and not m.uses_regularizer
    assert get_method("MiB+LGKD", "ade", "100-50").novel_kd == 20.0
    joint, ft = get_method("Joint", "voc", "offline"), get_method("FT", "voc", "offline")
    assert {**vars(joint), "name": "FT"} == vars(ft)


def test_regularizer_presets():
    for name in ("EWC", "PI", "RW"):
        m = get_method(name, "voc", "15-1")
        assert (m.regularizer, m.reg_importance, m.reg_alpha) == (name.lower(), 100.0, 0.9)
        assert (m.reg_normalize, m.reg_iterations, m.ce_type, m.kd_type) == (True, 10, "ce", None)
    with pytest.raises(ValueError, match="regularizer"):
        get_method("FT", "voc", "15-1", {"regularizer": "si"})


# -- estimators --------------------------------------------------------------------------------
# Two parameters: "a" (2 values, also in the old model), "b" (3 values, new at this step). Four
# updates; before update k the weights are THETA[k] and the gradients GRADS[k].
THETA = [
    {"a": [1.0, -2.0], "b": [0.5, 0.0, 3.0]},
    {"a": [0.8, -1.5], "b": [0.4, 0.2, 2.0]},
    {"a": [0.7, -1.7], "b": [0.1, 0.2, 2.5]},
    {"a": [0.2, -1.0], "b": [0.3, -0.4, 2.2]},
]
GRADS = [
    {"a": [0.5, -1.0], "b": [1.0, 0.0, 2.0]},
    {"a": [0.2, 0.4], "b": [-0.5, 0.3, 1.0]},
    {"a": [-0.1, 0.6], "b": [0.25, -0.2, -1.0]},
    {"a": [0.3, -0.2], "b": [0.7, 0.1, 0.5]},
]


def _tensors(values: dict) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}


def _run(estimator, params: dict[str, torch.Tensor], updates: range) -> None:
    for k in updates:
        for name, p in params.items():
            p.copy_(torch.tensor(THETA[k][name], dtype=p.dtype))
        estimator.update(params, _tensors(GRADS[k]))


def test_ewc_fisher_is_an_ema_of_squared_gradients_from_ones_or_the_previous():
    params = _tensors(THETA[0])
    prev_a = [2.0, 4.0]
    est = FisherEMA(params, alpha=0.9, previous={"fisher": {"a": torch.tensor(prev_a)}})
    _run(est, params, range(4))
    expected = {"a": list(prev_a), "b": [1.0, 1.0, 1.0]}  # new parameter: ones
    for k in range(4):
        for name in expected:
            expected[name] = [
                0.9 * g * g + 0.1 * f for g, f in zip(GRADS[k][name], expected[name], strict=True)
            ]
    out = est.export()
    assert out["alpha"] == 0.9
    for name, values in expected.items():
        np.testing.assert_allclose(out["fisher"][name].numpy(), values, rtol=1e-12)
        assert out["fisher"][name].device.type == "cpu"


def test_pi_path_integral_and_score():
    params = _tensors(THETA[0])
    old = {"a": torch.tensor([1.5, -2.5], dtype=torch.float64)}  # the teacher's weights
    prev_score = {"a": torch.tensor([0.25, 1.0], dtype=torch.float64)}
    est = PathIntegral(params, old=old, previous={"score": prev_score})
    _run(est, params, range(4))
    start = {"a": old["a"].tolist(), "b": THETA[0]["b"]}  # new parameters: their first value
    for name in ("a", "b"):
        delta = [0.0] * len(THETA[0][name])
        for k in range(1, 4):  # the first update only records the weights
            for i in range(len(delta)):
                delta[i] += GRADS[k][name][i] * (THETA[k - 1][name][i] - THETA[k][name][i])
        np.testing.assert_allclose(est.delta[name].numpy(), delta, rtol=1e-12)
        final = THETA[3][name]
        score = [
            max(d / ((final[i] - start[name][i]) ** 2 + 1e-20), 0.0) for i, d in enumerate(delta)
        ]
        if name == "a":
            score = [s + p for s, p in zip(score, prev_score["a"].tolist(), strict=True)]
        np.testing.assert_allclose(
            est.export(params)["score"][name].numpy(), score, rtol=1e-12, atol=1e-300
        )


def test_rw_samples_the_score_every_iterations_updates_and_averages_the_previous():
    params = _tensors(THETA[0])
    prev = {
        "fisher": {"a": torch.tensor([3.0, 0.5], dtype=torch.float64)},
        "score": {"a": torch.tensor([2.0, 8.0], dtype=torch.float64)},
    }
    est = RiemannianWalk(params, alpha=0.9, iterations=2, previous=prev)
    _run(est, params, range(4))
    for name in ("a", "b"):
        n = len(THETA[0][name])
        fisher = prev["fisher"]["a"].tolist() if name == "a" else [1.0] * n
        score, temp = [0.0] * n, None
        for k in range(4):
            if k % 2 == 0:  # updates 0 and 2 are sampled (count % iterations == 0)
                if temp is not None:
                    for i in range(n):
                        move = THETA[k][name][i] - temp[i]
                        gain = GRADS[k][name][i] * (-move)
                        score[i] += gain / (0.5 * fisher[i] * move * move + 1e-8)
                temp = list(THETA[k][name])
            fisher = [0.9 * g * g + 0.1 * f for g, f in zip(GRADS[k][name], fisher, strict=True)]
        clipped = [max(s, 0.0) for s in score]
        if name == "a":
            clipped = [
                0.5 * (c + p) for c, p in zip(clipped, prev["score"]["a"].tolist(), strict=True)
            ]
        out = est.export()
        np.testing.assert_allclose(out["fisher"][name].numpy(), fisher, rtol=1e-12)
        np.testing.assert_allclose(out["score"][name].numpy(), clipped, rtol=1e-12)
        assert (out["alpha"], out["iterations"]) == (0.9, 2)
    assert est.count == 4


@pytest.mark.parametrize("kind", ["ewc", "pi", "rw"])
def test_estimator_state_round_trip_continues_bit_identically(kind):
    def make(params):
        if kind == "ewc":
            return FisherEMA(params)
        if kind == "pi":
            return PathIntegral(params)
        return RiemannianWalk(params, iterations=2)

    p1 = _tensors(THETA[0])
    whole = make(p1)
    _run(whole, p1, range(4))
    p2 = _tensors(THETA[0])
    first = make(p2)
    _run(first, p2, range(3))
    state = first.state_dict()
    p3 = _tensors({k: [9.0] * len(v) for k, v in THETA[0].items()})  # a fresh process
    second = make(p3)
    second.load_state_dict(state)
    _run(second, p3, range(3, 4))
    a, b = whole.export(p1), second.export(p3)
    for key in a:
        if isinstance(a[key], dict):
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), (key, name)


# -- penalty -----------------------------------------------------------------------------------
def test_normalize_is_the_reference_min_max():
    x = torch.tensor([[3.0, -1.0], [7.0, 0.5]])
    np.testing.assert_allclose(normalize(x).numpy(), (x.numpy() + 1.0) / (8.0 + 1e-8), rtol=1e-6)
    assert torch.equal(normalize(torch.full((3,), 5.0)), torch.zeros(3))


def test_importance_weights_normalise_each_tensor():
    f = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([10.0, 20.0, 30.0])}
    s = {"a": torch.tensor([0.0, 4.0]), "b": torch.tensor([2.0, 2.0, 6.0])}
    ewc = importance_weights("ewc", {"fisher": f})
    torch.testing.assert_close(ewc["b"], torch.tensor([0.0, 0.5, 1.0]))
    pi = importance_weights("pi", {"score": s})
    torch.testing.assert_close(pi["a"], torch.tensor([0.0, 1.0]))
    rw = importance_weights("rw", {"fisher": f, "score": s})
    torch.testing.assert_close(rw["b"], torch.tensor([0.0, 0.5, 2.0]))
    raw = importance_weights("rw", {"fisher": f, "score": s}, normalize_each=False)
    torch.testing.assert_close(raw["b"], f["b"] + s["b"])


def test_penalty_gradient_is_autograds():
    g = torch.Generator().manual_seed(4)
    shapes = {"w": (3, 2), "b": (4,), "new": (5,)}
    params = {k: torch.nn.Parameter(torch.randn(*s, generator=g)) for k, s in shapes.items()}
    old = {k: torch.randn(*shapes[k], generator=g) for k in ("w", "b")}  # "new" is not in it
    weights = {k: torch.rand(*shapes[k], generator=g) for k in ("w", "b")}
    reg = 100.0 * penalty(params, old, weights)
    by_hand = sum(float((weights[k] * (params[k].detach() - old[k]) ** 2).sum()) for k in old)
    np.testing.assert_allclose(float(reg.detach()), 100.0 * by_hand, rtol=1e-6)
    reg.backward()
    expected = {k: p.grad.clone() for k, p in params.items() if p.grad is not None}
    assert set(expected) == {"w", "b"}
    main = {k: torch.randn(*shapes[k], generator=g) for k in shapes}  # the main loss's grads
    for k, p in params.items():
        p.grad = main[k].clone()
    value = add_penalty_grad(params, old, weights, 100.0)
    torch.testing.assert_close(value, reg.detach())
    for k, p in params.items():
        torch.testing.assert_close(p.grad, main[k] + expected.get(k, 0.0))


# -- the preset table --------------------------------------------------------------------------
def test_methods_command_prints_every_preset_as_csv(capsys):
    assert cli.main(["methods", "--dataset", "voc", "--task", "15-5"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["method"] for r in rows] == list(PRESETS)
    by = {r["method"]: r for r in rows}
    for name in ("LGKD", "MiB+LGKD"):
        assert (float(by[name]["prev_kd"]), float(by[name]["novel_kd"])) == (5.0, 1.0)
    assert (by["MiB+LGKD"]["ce"], by["MiB+LGKD"]["kd"], by["MiB+LGKD"]["pod"]) == (
        "unce",
        "lgkd",
        "false",
    )
    assert (by["LwF-MC"]["ce"], float(by["LwF-MC"]["icarl"])) == ("bce", 10.0)
    for name in ("EWC", "PI", "RW"):
        assert by[name]["regularizer"] == name.lower()
        assert float(by[name]["reg_importance"]) == 100.0
    assert float(by["PLOP"]["pod_logits_factor"]) == 0.0005 and by["FT"]["kd"] == ""

    assert cli.main(["methods"]) == 0  # default voc/15-1
    default = {r["method"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert (float(default["LGKD"]["prev_kd"]), float(default["LGKD"]["novel_kd"])) == (1.0, 0.0)
