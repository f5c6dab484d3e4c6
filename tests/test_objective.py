"""The per-iteration objective: parity of the LGKD composition with the reference's training
loop (fixture built from the reference's own loss functions and its train.py wiring), and the
component set, forward and backward of every preset."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lgkd_core.losses.objective import step_losses
from lgkd_core.methods import PRESETS, get_method

FIX = Path(__file__).parent / "fixtures" / "losses"
TOL = {"rtol": 1e-5, "atol": 1e-5}


@dataclass
class Feats:
    stages: list
    body: torch.Tensor
    logits_small: torch.Tensor


def test_lgkd_objective_matches_reference_composition():
    f = torch.load(FIX / "objective_lgkd.pt", weights_only=False)
    leaves = [
        x.detach().clone().requires_grad_(True)
        for x in [f["student_logits"], f["s_small"], *f["s_stages"]]
    ]
    s_full, s_small, *s_stages = leaves
    body = torch.zeros(1)  # unused by LGKD
    method = get_method("LGKD", "voc", "15-5", {"prev_kd": f["prev"], "novel_kd": f["novel"]})
    out = step_losses(
        method,
        f["labels"].long(),
        s_full,
        teacher_logits=f["teacher_logits"],
        student_feats=Feats(s_stages, body, s_small),
        teacher_feats=Feats(f["t_stages"], body, f["t_small"]),
        thresholds=f["thresholds"],
        num_old=f["num_old"],
        num_seen=f["num_seen"],
        num_new=f["num_new"],
    )
    assert set(out) == {"ce", "kd", "pod", "total"}
    for key in ("ce", "kd", "pod", "total"):
        torch.testing.assert_close(out[key].detach(), f[key], **TOL)
    out["total"].backward()
    for got, ref in zip(leaves, f["grads"], strict=True):
        torch.testing.assert_close(got.grad, ref, **TOL)


def test_plop_is_lgkd_without_kd_on_the_same_batch():
    f = torch.load(FIX / "objective_lgkd.pt", weights_only=False)
    feats = Feats(f["s_stages"], torch.zeros(1), f["s_small"])
    t_feats = Feats(f["t_stages"], torch.zeros(1), f["t_small"])
    kwargs = {
        "teacher_logits": f["teacher_logits"],
        "student_feats": feats,
        "teacher_feats": t_feats,
        "thresholds": f["thresholds"],
        "num_old": 3,
        "num_seen": 4,
        "num_new": 1,
    }
    labels = f["labels"].long()
    plop = step_losses(get_method("PLOP", "voc", "15-5"), labels, f["student_logits"], **kwargs)
    assert set(plop) == {"ce", "pod", "total"}
    torch.testing.assert_close(plop["ce"], f["ce"], **TOL)
    torch.testing.assert_close(plop["pod"], f["pod"], **TOL)


def _batch(step: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    num_old, num_new = (0, 4) if step == 0 else (4, 2)
    num_seen = num_old + num_new
    b, size, small = 2, 32, 4

    def r(*shape):
        return torch.randn(*shape, generator=g)

    labels = torch.randint(0, num_seen, (b, size, size), generator=g)
    if step > 0:
        labels[labels < num_old] = 0
    labels[:, :3] = 255

    def feats(channels):
        stages = [r(b, 3, 16, 16), r(b, 4, 8, 8), r(b, 5, small, small), r(b, 5, small, small)]
        stages.append(r(b, 6, small, small))
        return Feats(stages, r(b, 5, small, small), r(b, channels, small, small))

    s_feats = feats(num_seen)
    for t in (*s_feats.stages, s_feats.body, s_feats.logits_small):
        t.requires_grad_(True)
    s_logits = r(b, num_seen, size, size).requires_grad_(True)
    if step == 0:
        return labels, s_logits, {"num_old": 0, "num_seen": num_seen, "num_new": num_new}
    return (
        labels,
        s_logits,
        {
            "teacher_logits": r(b, num_old, size, size) * 4,
            "student_feats": s_feats,
            "teacher_feats": feats(num_old),
            "thresholds": torch.full((num_old,), 0.05),
            "num_old": num_old,
            "num_seen": num_seen,
            "num_new": num_new,
        },
    )


EXPECTED = {
    "FT": {"ce"},
    "Joint": {"ce"},
    "LwF": {"ce", "kd"},
    "LwF-MC": {"ce", "icarl"},
    "ILT": {"ce", "kd", "de"},
    "EWC": {"ce"},  # + "reg", added by the trainer (it needs the parameters)
    "PI": {"ce"},
    "RW": {"ce"},
    "MiB": {"ce", "kd"},
    "PLOP": {"ce", "pod"},
    "LGKD": {"ce", "kd", "pod"},
    "MiB+LGKD": {"ce", "kd"},
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_forward_and_backward_with_its_components(name):
    assert set(EXPECTED) == set(PRESETS)
    method = get_method(name, "voc", "15-5")
    labels, s_logits, kwargs = _batch(step=1)
    if not method.needs_features:
        kwargs["student_feats"] = kwargs["teacher_feats"] = None
    out = step_losses(method, labels, s_logits, **kwargs)
    assert set(out) == EXPECTED[name] | {"total"}
    torch.testing.assert_close(out["total"], sum(v for k, v in out.items() if k != "total"))
    for value in out.values():
        assert value.dtype == torch.float32 and value.dim() == 0 and torch.isfinite(value)
    out["total"].backward()
    assert s_logits.grad is not None and s_logits.grad.abs().sum() > 0
    if "pod" in out or method.kd_type == "lgkd":
        assert kwargs["student_feats"].logits_small.grad.abs().sum() > 0
    if "de" in out:
        assert kwargs["student_feats"].body.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(PRESETS))
def test_step_zero_is_cross_entropy_only(name):
    labels, s_logits, kwargs = _batch(step=0)
    out = step_losses(get_method(name, "voc", "15-5"), labels, s_logits, **kwargs)
    assert set(out) == {"ce", "total"}
    expected = torch.nn.functional.cross_entropy(
        s_logits, labels, ignore_index=255, reduction="none"
    )
    torch.testing.assert_close(out["total"], expected.mean())


def test_lgkd_uses_original_labels_not_pseudo_labels():
    labels, s_logits, kwargs = _batch(step=1, seed=2)
    method = get_method("LGKD", "voc", "15-5")
    strict = step_losses(method, labels, s_logits, **{**kwargs, "thresholds": torch.zeros(4)})
    loose = step_losses(method, labels, s_logits, **{**kwargs, "thresholds": torch.ones(4)})
    torch.testing.assert_close(strict["kd"], loose["kd"])
    assert not torch.allclose(strict["ce"], loose["ce"])


def test_adaptive_factor_scales_cross_entropy():
    labels, s_logits, kwargs = _batch(step=1, seed=3)
    on = step_losses(get_method("PLOP", "voc", "15-5"), labels, s_logits, **kwargs)
    off = step_losses(
        get_method("PLOP", "voc", "15-5", {"adaptive_factor": False}), labels, s_logits, **kwargs
    )
    assert on["ce"] < off["ce"]


def test_missing_thresholds_or_features_are_explained():
    labels, s_logits, kwargs = _batch(step=1)
    with pytest.raises(ValueError, match="thresholds"):
        step_losses(
            get_method("PLOP", "voc", "15-5"), labels, s_logits, **{**kwargs, "thresholds": None}
        )
    with pytest.raises(ValueError, match="return_features"):
        step_losses(
            get_method("LGKD", "voc", "15-5"), labels, s_logits, **{**kwargs, "student_feats": None}
        )
    with pytest.raises(ValueError, match="num_old"):
        step_losses(get_method("FT", "voc", "15-5"), labels, s_logits, **{**kwargs, "num_old": 3})


def test_bf16_autocast_inputs_give_fp32_losses():
    labels, s_logits, kwargs = _batch(step=1)
    half = {
        **kwargs,
        "teacher_logits": kwargs["teacher_logits"].bfloat16(),
        "student_feats": Feats(
            [t.detach().bfloat16() for t in kwargs["student_feats"].stages],
            kwargs["student_feats"].body.detach().bfloat16(),
            kwargs["student_feats"].logits_small.detach().bfloat16(),
        ),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = step_losses(get_method("LGKD", "voc", "15-5"), labels, s_logits.bfloat16(), **half)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert torch.isfinite(out["total"])
