"""DGCNN point segmenter: shapes, kNN (chunked = unchunked = brute force), edge features,
per-step classifiers with MiB's balanced init, determinism, and a few training iterations on
synthetic rooms."""

import math

import numpy as np
import pytest
import torch

from lgkd_core.data.synthetic3d import synthesize3d
from lgkd_core.losses import cross_entropy
from lgkd_core.models import (
    IncrementalPointSegmenter,
    PointFeatures,
    build_point_model,
    init_balanced,
)
from lgkd_core.models.dgcnn import edge_features, knn
from lgkd_core.tasks import get_task, point_label_lut

N, K = 256, 8


def _points(b: int = 2, n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(b, 3, n, generator=g) * 1.0
    rgb = torch.rand(b, 3, n, generator=g)
    return torch.cat([xyz, rgb, xyz / xyz.amax(dim=2, keepdim=True)], dim=1)


def _tiny(classes=(4,), **kw) -> IncrementalPointSegmenter:
    kw = {"k": K, "edge_widths": ((16, 16), (16, 16)), "mlp": (64, 32), **kw}
    return build_point_model(list(classes), **kw)


def test_default_model_shapes_and_features():
    torch.manual_seed(0)
    model = build_point_model([5, 2], k=K)  # default widths, k small for speed
    assert model.classes_per_step == [5, 2] and model.num_classes == 7
    assert model.body.local_channels == 192 and model.feature_channels == 256
    x = _points()
    logits = model(x)
    assert logits.shape == (2, 7, N)
    logits2, feats = model(x, return_features=True)
    assert isinstance(feats, PointFeatures)
    assert [s.shape for s in feats.stages] == [(2, 64, N)] * 3 + [(2, 256, N)]
    assert feats.body.shape == (2, 256, N) and feats.logits_small is logits2
    with pytest.raises(ValueError, match=r"\(B, 9, N\)"):
        model(x[:, :6])


@pytest.mark.parametrize("kw", [{"knn_on": "all"}, {"global_dim": 48}, {"dropout": 0.5}])
def test_variants_run(kw):
    model = _tiny(**kw)
    assert model(_points()).shape == (2, 4, N)


def test_bad_arguments():
    with pytest.raises(ValueError, match="knn_on"):
        _tiny(knn_on="rgb")
    with pytest.raises(ValueError, match="classes_per_step"):
        _tiny(classes=(0,))
    with pytest.raises(ValueError, match="k <="):
        knn(torch.rand(1, 3, 5), 6)


def test_knn_chunked_equals_unchunked_and_brute_force():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 5, 100, generator=g, dtype=torch.float64)
    full = knn(x, K)
    for chunk in (1, 7, 33, 100, 1000):
        assert torch.equal(knn(x, K, chunk), full), chunk
    a = x.numpy().transpose(0, 2, 1)  # (B, N, C)
    d = ((a[:, :, None, :] - a[:, None, :, :]) ** 2).sum(-1)
    brute = np.argsort(d, axis=-1, kind="stable")[..., :K]
    np.testing.assert_array_equal(full.numpy(), brute)
    assert torch.equal(full[..., 0], torch.arange(100).expand(2, -1))  # self is nearest
    x32 = x.float()
    assert torch.equal(knn(x32, K, 16), knn(x32, K))


def test_knn_has_no_gradient_and_handles_bf16():
    x = torch.rand(1, 3, 50, requires_grad=True)
    idx = knn(x, 4, 8)
    assert not idx.requires_grad and idx.dtype == torch.int64
    assert torch.equal(knn(x.detach().bfloat16(), 4), knn(x.detach().bfloat16().float(), 4))


def test_edge_features_are_neighbour_minus_centre_and_centre():
    x = torch.rand(2, 3, 20)
    idx = knn(x, 4)
    e = edge_features(x, idx)
    assert e.shape == (2, 6, 20, 4)
    for b, i, j in [(0, 0, 1), (1, 7, 3), (1, 19, 0)]:
        nb = x[b, :, idx[b, i, j]]
        assert torch.equal(e[b, :3, i, j], nb - x[b, :, i])
        assert torch.equal(e[b, 3:, i, j], x[b, :, i])


def test_add_step_and_init_balanced():
    torch.manual_seed(0)
    model = _tiny(classes=(5,)).eval()
    x = _points()
    bg_before = torch.softmax(model(x), dim=1)[:, 0]
    conv = model.add_step(2)
    assert isinstance(conv, torch.nn.Conv1d) and conv.weight.shape == (2, 32, 1)
    assert model.classes_per_step == [5, 2] and model.num_classes == 7
    b0 = float(model.cls[0].bias[0].detach())
    init_balanced(model, 2)
    assert torch.equal(model.cls[1].weight, model.cls[0].weight[0:1].expand(2, -1, -1))
    assert torch.allclose(model.cls[1].bias, torch.full((2,), b0 - math.log(3)))
    p = torch.softmax(model(x), dim=1)
    # The old background probability is split evenly over background and the 2 new classes.
    torch.testing.assert_close(p[:, 0], bg_before / 3)
    torch.testing.assert_close(p[:, 5], bg_before / 3)
    torch.testing.assert_close(p[:, 0] + p[:, 5] + p[:, 6], bg_before)
    with pytest.raises(ValueError, match="at least one class"):
        model.add_step(0)


def test_forward_is_deterministic_and_per_sample():
    torch.manual_seed(3)
    a = _tiny()
    torch.manual_seed(3)
    b = _tiny()
    x = _points(3)
    assert torch.equal(a(x), b(x))  # training mode: same init, same batch statistics
    a.eval()
    assert torch.equal(a(x), a(x))
    # Eval mode: no sample's kNN or statistics leak into another's output.
    torch.testing.assert_close(a(x[1:2]), a(x)[1:2], rtol=1e-5, atol=1e-5)


def _block_batch(root, n_blocks: int, n_points: int) -> tuple[torch.Tensor, np.ndarray]:
    """The protocol's sample of a block: n points, xyz shifted to the block minimum, rgb / 255
    and xyz scaled to [0, 1]; returns features (B, 9, N) and the stored labels (B, N)."""
    rng = np.random.default_rng(0)
    files = sorted((root / "blocks").glob("*.npy"))
    picks = rng.choice(len(files), n_blocks, replace=False)
    feats, labels = [], []
    for i in picks:
        block = np.load(files[i])
        pts = block[rng.choice(len(block), n_points, replace=len(block) < n_points)]
        xyz = pts[:, :3] - pts[:, :3].min(axis=0)
        feats.append(np.concatenate([xyz, pts[:, 3:6] / 255, xyz / xyz.max(axis=0)], axis=1).T)
        labels.append(pts[:, 6].astype(np.int64))
    return torch.from_numpy(np.stack(feats)).float(), np.stack(labels)


def test_a_few_training_iterations_reduce_the_loss(tmp_path):
    synthesize3d(tmp_path, seed=0, train_rooms=1, val_rooms=0, density=150.0)
    task = get_task("synthetic3d", "offline")
    x, stored = _block_batch(tmp_path, 8, N)
    y = torch.from_numpy(point_label_lut(task, 0)[stored].astype(np.int64))
    torch.manual_seed(0)
    model = _tiny(classes=task.classes_per_step(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
