"""The losses on point clouds: logits (B, C, N) with labels (B, N) give exactly what the same
data gives viewed as images ((B, C, N, 1) and (B, C, H, W)), and match per-point formulas
written out here; POD refuses point maps with a clear error."""

import math

import pytest
import torch

from lgkd_core.losses import (
    EntropyThresholds,
    bce_with_ignore,
    cross_entropy,
    icarl_distillation,
    kd_loss,
    lgkd_loss,
    pod_loss,
    pseudo_label_entropy,
    unbiased_cross_entropy,
    unbiased_kd_loss,
)
from lgkd_core.losses.objective import step_losses
from lgkd_core.losses.pod import local_pod_embedding
from lgkd_core.methods import get_method
from lgkd_core.models.dgcnn import PointFeatures

B, OLD, NEW, H, W = 2, 4, 2, 3, 5
C, N = OLD + NEW, H * W
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, N, generator=g) * 2
    t = torch.randn(B, OLD, N, generator=g) * 2
    y = torch.randint(0, C, (B, N), generator=g)
    y[0, :3] = 255
    y[1, 4] = 255
    return s, t, y


def _views(*tensors, img: bool):
    """(B, C, N) / (B, N) -> (B, C, H, W) / (B, H, W) (img) or (B, C, N, 1) / (B, N, 1)."""
    out = []
    for x in tensors:
        shape = (H, W) if img else (N, 1)
        out.append(x.reshape(*x.shape[: x.dim() - 1], *shape))
    return out


def _same_on_image_views(fn, *args):
    """fn on points equals fn on both image views, exactly (outputs reshaped to compare)."""
    ref = fn(*args)
    for img in (False, True):
        got = fn(*_views(*args, img=img))
        ref_t = ref if isinstance(ref, tuple) else (ref,)
        got_t = got if isinstance(got, tuple) else (got,)
        for a, b in zip(ref_t, got_t, strict=True):
            assert torch.equal(a, b.reshape(a.shape)), fn
    return ref


def _valid(y):
    return y != 255


def test_cross_entropy():
    s, _, y = _data()
    loss = _same_on_image_views(cross_entropy, s, y)
    logp = torch.log_softmax(s, dim=1)
    per = torch.zeros(B, N)
    for b in range(B):
        for i in range(N):
            if y[b, i] != 255:
                per[b, i] = -logp[b, y[b, i], i]
    torch.testing.assert_close(loss, per.mean(), **TOL)
    valid = _same_on_image_views(lambda a, b: cross_entropy(a, b, reduction="valid_pixels"), s, y)
    torch.testing.assert_close(valid, per.sum() / _valid(y).sum(), **TOL)
    assert cross_entropy(s, y, reduction="none").shape == (B, N)


def test_unbiased_cross_entropy():
    s, _, y = _data(1)
    loss = _same_on_image_views(lambda a, b: unbiased_cross_entropy(a, b, OLD), s, y)
    lse = torch.logsumexp(s, dim=1)
    per = torch.zeros(B, N)
    for b in range(B):
        for i in range(N):
            c = int(y[b, i])
            if c == 255:
                continue
            num = torch.logsumexp(s[b, :OLD, i], 0) if c < OLD else s[b, c, i]
            per[b, i] = lse[b, i] - num
    torch.testing.assert_close(loss, per.mean(), **TOL)


def test_kd_and_unbiased_kd():
    s, t, _ = _data(2)
    q = torch.softmax(t, dim=1)
    kd = _same_on_image_views(kd_loss, s, t)
    ref = -(q * torch.log_softmax(s[:, :OLD], dim=1)).mean(dim=1).mean()
    torch.testing.assert_close(kd, ref, **TOL)

    unkd = _same_on_image_views(unbiased_kd_loss, s, t)
    p = torch.softmax(s, dim=1)
    per = q[:, 0] * torch.log(p[:, 0] + p[:, OLD:].sum(dim=1))
    per = per + (q[:, 1:] * torch.log(p[:, 1:OLD])).sum(dim=1)
    torch.testing.assert_close(unkd, -(per / OLD).mean(), **TOL)


def test_lgkd():
    s, t, y = _data(3)
    prev, novel = 5.0, 0.5
    loss = _same_on_image_views(lambda a, b, c: lgkd_loss(a, b, c, prev, novel), s, t, y)
    logp, q = torch.log_softmax(s, dim=1), torch.softmax(t, dim=1)
    total, count = 0.0, 0
    for b in range(B):
        for i in range(N):
            c = int(y[b, i])
            if c == 255:
                continue
            count += 1
            if c < OLD:
                total += -prev * float((q[b, :, i] * logp[b, :OLD, i]).sum())
            else:
                target = q[b, :, i].clone()
                moved = float(target[0])
                target[0] = 0
                value = (target * logp[b, :OLD, i]).sum() + moved * logp[b, c, i]
                total += -novel * float(value)
    torch.testing.assert_close(loss, torch.tensor(total / count), **TOL)


def test_entropy_pseudo_labels_and_thresholds():
    _, t, y = _data(4)
    seen = C
    thresholds = torch.tensor([0.004, 0.01, 0.002, 0.02])
    labels, factor = _same_on_image_views(
        lambda a, b: pseudo_label_entropy(a, b, thresholds, seen), t, y
    )
    q = torch.softmax(t, dim=1)
    u = -(q * torch.log(q + 1e-8)).mean(dim=1) / math.log(OLD) / math.log(seen)
    pred = q.argmax(dim=1)
    background = y < OLD
    accepted = background & (u < thresholds[pred])
    expected = torch.where(accepted, pred, torch.where(background, 255, y))
    assert torch.equal(labels, expected)
    torch.testing.assert_close(
        factor, accepted.float().sum(dim=1) / (background.float().sum(dim=1) + 1e-6)
    )

    def hist(logits, lab):
        acc = EntropyThresholds(OLD, seen)
        acc.update(logits, lab)
        return acc.hist

    _same_on_image_views(hist, t, y)


def test_bce_and_icarl():
    s, t, y = _data(5)
    _same_on_image_views(bce_with_ignore, s, y)
    _same_on_image_views(icarl_distillation, s, t)


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("FT", {}),
        ("LwF", {}),
        ("LwF-MC", {}),
        ("ILT", {}),
        ("MiB", {}),
        ("MiB+LGKD", {}),
        ("LGKD", {"pod": False}),  # PLOP's pseudo-labels + LGKD, without POD
    ],
)
def test_step_losses_on_points(method, overrides):
    s, t, y = _data(6)
    y = torch.where(y == 255, y, y.clamp(max=C - 1))
    g = torch.Generator().manual_seed(7)
    body_s, body_t = torch.randn(B, 8, N, generator=g), torch.randn(B, 8, N, generator=g)
    m = get_method(method, "scannet", "15-5", overrides)
    thresholds = torch.full((OLD,), 0.01)

    def run(s, t, y, bs, bt):
        out = step_losses(
            m,
            y,
            s,
            teacher_logits=t,
            student_feats=PointFeatures([bs], bs, s),
            teacher_feats=PointFeatures([bt], bt, t),
            thresholds=thresholds,
            num_old=OLD,
        )
        return tuple(out[k] for k in sorted(out))

    got = _same_on_image_views(run, s, t, y, body_s, body_t)
    assert all(torch.isfinite(v) for v in got)


def test_pod_refuses_point_maps():
    s, t, _ = _data(8)
    with pytest.raises(ValueError, match=r"Point clouds \(B, C, N\).*without POD"):
        pod_loss([t], [s], [1.0], C, NEW)
    with pytest.raises(ValueError, match="image maps"):
        local_pod_embedding(s)
    m = get_method("LGKD", "scannet", "15-5")
    feats = PointFeatures([s[:, :3]], s, s)
    t_feats = PointFeatures([t[:, :3]], t, t)
    _, _, y = _data(8)
    with pytest.raises(ValueError, match="POD"):
        step_losses(
            m,
            y,
            s,
            teacher_logits=t,
            student_feats=feats,
            teacher_feats=t_feats,
            thresholds=torch.full((OLD,), 0.01),
            num_old=OLD,
        )
