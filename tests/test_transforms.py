"""Joint image + mask transforms keep image and labels aligned and labels unmixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from lgkd_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

# label -> a colour far from the others
COLOURS = {
    0: (0, 0, 0),
    3: (255, 0, 0),
    7: (0, 255, 0),
    12: (0, 0, 255),
    20: (255, 255, 0),
    255: (255, 255, 255),
}


def _scene(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A mask of labelled rectangles (12 px wide at least) and the image painting each label."""
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[5:30, 10:45] = 3
    mask[20:55, 40:70] = 7
    mask[35:58, 3:25] = 12
    mask[2:18, 55:78] = 20
    mask[30:34, 25:40] = 255  # a thin ignore band, like VOC borders
    lut = np.zeros((256, 3), dtype=np.uint8)
    for label, colour in COLOURS.items():
        lut[label] = colour
    return lut[mask], mask


def _inputs(image: np.ndarray, mask: np.ndarray):
    return (
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()),
        tv_tensors.Mask(torch.from_numpy(mask)),
    )


def _denormalise(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


def _interior(mask: np.ndarray, r: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood holds a single label."""
    h, w = mask.shape
    pad = np.pad(mask, r, mode="edge")
    same = np.ones_like(mask, dtype=bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            same &= pad[dy : dy + h, dx : dx + w] == mask
    return same


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_keeps_image_and_mask_aligned(seed):
    image, mask = _scene()
    torch.manual_seed(seed)
    out_image, out_mask = train_transform(48)(*_inputs(image, mask))
    assert out_image.shape == (3, 48, 48) and out_image.dtype == torch.float32
    assert out_mask.shape == (48, 48) and out_mask.dtype == torch.uint8
    assert isinstance(out_mask, tv_tensors.Mask)
    m = out_mask.numpy()
    # nearest interpolation: only labels of the input, never a blend of two
    assert set(np.unique(m).tolist()) <= set(np.unique(mask).tolist())
    rgb = _denormalise(out_image)
    inside = _interior(m)
    assert inside.mean() > 0.3
    expected = np.array([COLOURS[v] for v in m[inside]], dtype=float)
    assert np.abs(rgb[inside] - expected).max() < 40


def test_train_transform_is_random_and_flips():
    image, mask = _scene()
    outs = []
    for seed in range(20):
        torch.manual_seed(seed)
        outs.append(train_transform(48)(*_inputs(image, mask))[1].numpy())
    assert len({o.tobytes() for o in outs}) == 20
    # the same seed gives the same crop (the engine seeds each sample)
    torch.manual_seed(3)
    again = train_transform(48)(*_inputs(image, mask))[1].numpy()
    np.testing.assert_array_equal(again, outs[3])
    # label 20 sits on the right of the scene: some samples show it on the left (flipped)
    left = [o[:, :24] == 20 for o in outs]
    assert any(x.any() for x in left)


def test_eval_transform_resizes_shorter_side_and_centre_crops():
    image, mask = _scene(60, 80)
    out_image, out_mask = eval_transform(30)(*_inputs(image, mask))
    assert out_image.shape == (3, 30, 30) and out_mask.shape == (30, 30)
    # 60x80 -> 30x40 (factor 1/2): output pixel k samples the centre of source pixel 2k+1
    # (as PIL's NEAREST does); the centre crop drops 5 output columns each side.
    np.testing.assert_array_equal(out_mask.numpy(), mask[1::2, 11:71:2])
    rgb = _denormalise(out_image)
    inside = _interior(out_mask.numpy())
    expected = np.array([COLOURS[v] for v in out_mask.numpy()[inside]], dtype=float)
    assert np.abs(rgb[inside] - expected).max() < 40


def test_eval_transform_none_keeps_the_full_image():
    image, mask = _scene(37, 53)
    out_image, out_mask = eval_transform(None)(*_inputs(image, mask))
    assert out_image.shape == (3, 37, 53)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    np.testing.assert_allclose(_denormalise(out_image), image.astype(float), atol=1e-3)


def test_mask_resizing_matches_pil_nearest():
    from PIL import Image

    rng = np.random.default_rng(0)
    mask = rng.choice([0, 3, 7, 255], size=(37, 53)).astype(np.uint8)
    image = np.zeros((37, 53, 3), dtype=np.uint8)
    _, out_mask = eval_transform(24)(*_inputs(image, mask))
    # shorter side 37 -> 24, longer 53 -> int(53 * 24 / 37) = 34; centre crop keeps columns 5..28
    pil = np.asarray(Image.fromarray(mask).resize((34, 24), Image.NEAREST))
    np.testing.assert_array_equal(out_mask.numpy(), pil[:, 5:29])
