"""The tutor's person representation: label masks, pose maps, the 45-channel warp input, PB generator inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pfafn import person as P
from pfafn.synthetic.world import SyntheticWorld, WorldConfig

H, W = 64, 48


def _reference_pose_maps(keypoints: np.ndarray, height: int, width: int, r: int = 5) -> np.ndarray:
    """The published loader's pose maps (PIL rectangles, then ToTensor + Normalize(0.5, 0.5))."""
    out = np.zeros((len(keypoints), height, width), np.float32)
    for i, (x, y) in enumerate(keypoints[:, :2]):
        one = Image.new("L", (width, height))
        if x > 1 and y > 1:
            ImageDraw.Draw(one).rectangle((x - r, y - r, x + r, y + r), "white", "white")
        out[i] = np.asarray(one, np.float32) / 255.0 * 2.0 - 1.0
    return out


@pytest.fixture(scope="module")
def sample():
    world = SyntheticWorld(3, 3, WorldConfig(seed=11))
    return [world.render_person(i) for i in range(3)]


def _toy_maps() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    parsing = rng.choice([0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], size=(H, W)).astype(np.uint8)
    densepose = rng.integers(0, 25, size=(H, W)).astype(np.uint8)
    return parsing, densepose


def test_label_constants() -> None:
    assert P.FACE_LABELS == (1, 12)
    assert P.OTHER_CLOTHES_LABELS == (5, 6, 8, 9, 10)
    assert P.ARM_LABELS == (11, 13)
    assert P.DP_HAND_PARTS == (3, 4)
    assert P.DP_ARM_PARTS == tuple(range(15, 23))
    assert P.TUTOR_WARP_CHANNELS == 45 and P.TUTOR_GEN_CHANNELS == 8


def test_masks_follow_the_reference_label_sets() -> None:
    parsing, _ = _toy_maps()
    fm = P.face_mask(parsing)
    assert fm.shape == (1, H, W) and fm.dtype == torch.float32
    np.testing.assert_array_equal(fm[0].numpy(), np.isin(parsing, (1, 12)))
    np.testing.assert_array_equal(P.other_clothes_mask(parsing)[0].numpy(), np.isin(parsing, (5, 6, 8, 9, 10)))
    # label 7 ("noise") is merged into 4
    np.testing.assert_array_equal(P.person_clothes_edge(parsing)[0].numpy(), np.isin(parsing, (4, 7)))
    np.testing.assert_array_equal(P.arm_mask(parsing)[0].numpy(), np.isin(parsing, (11, 13)))
    merged = P.merge_noise_label(parsing).numpy()
    assert not (merged == 7).any() and (merged[parsing == 7] == 4).all()


def test_pose_maps_match_pil_drawing_exactly() -> None:
    rng = np.random.default_rng(1)
    kp = np.stack([rng.uniform(-3, W + 3, 18), rng.uniform(-3, H + 3, 18), rng.uniform(0, 1, 18)], 1)
    kp[0] = (0, 0, 0)  # missing
    kp[1] = (1.0, 30.0, 0.9)  # x must be > 1
    kp[2] = (20.0, 1.0, 0.9)  # y must be > 1
    kp[3] = (10.6, 20.5, 0.8)  # fractional coordinates
    kp[4] = (1.5, 1.5, 0.8)  # clipped square in the corner
    maps = P.pose_maps(kp, H, W)
    assert maps.shape == (18, H, W) and maps.dtype == torch.float32
    np.testing.assert_array_equal(maps.numpy(), _reference_pose_maps(kp, H, W))
    assert (maps[0] == -1).all() and (maps[1] == -1).all() and (maps[2] == -1).all()
    # an integer keypoint gives an 11×11 square centred on it
    square = P.pose_maps(np.array([[20.0, 30.0, 1.0]]), H, W)[0]
    ys, xs = np.nonzero(square.numpy() > 0)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (25, 35, 15, 25)
    assert set(np.unique(square.numpy()).tolist()) == {-1.0, 1.0}


def test_pose_maps_batch_and_radius() -> None:
    kp = torch.tensor([[[10.0, 10.0, 1.0]] * 18, [[30.0, 40.0, 1.0]] * 18])
    maps = P.pose_maps(kp, H, W, radius=2)
    assert maps.shape == (2, 18, H, W)
    assert (maps[0, 0] > 0).sum() == 25 and maps[1, 5, 40, 30] == 1 and maps[1, 5, 10, 10] == -1
    with pytest.raises(ValueError):
        P.pose_maps(np.zeros((18, 4)), H, W)


def test_tutor_warp_input_layout(sample) -> None:
    p = sample[0]
    x = P.tutor_warp_input(p.parsing, p.densepose, p.keypoints)
    h, w = p.parsing.shape
    assert x.shape == (45, h, w) and x.dtype == torch.float32
    np.testing.assert_array_equal(x[0].numpy(), np.isin(p.parsing, (1, 12)))
    np.testing.assert_array_equal(x[1].numpy(), np.isin(p.parsing, (5, 6, 8, 9, 10)))
    one_hot = x[2:27]
    assert torch.equal(one_hot.sum(0), torch.ones(h, w))  # exactly one part (or background) per pixel
    np.testing.assert_array_equal(one_hot.argmax(0).numpy(), p.densepose)
    np.testing.assert_array_equal(x[27:].numpy(), _reference_pose_maps(p.keypoints, h, w))


def test_tutor_warp_input_batched_torch(sample) -> None:
    parsing = torch.from_numpy(np.stack([s.parsing for s in sample]))
    densepose = torch.from_numpy(np.stack([s.densepose for s in sample]))
    keypoints = torch.from_numpy(np.stack([s.keypoints for s in sample]))
    x = P.tutor_warp_input(parsing, densepose, keypoints)
    assert x.shape == (3, 45, 256, 192)
    single = P.tutor_warp_input(sample[1].parsing, sample[1].densepose, sample[1].keypoints)
    assert torch.equal(x[1], single)


def test_tutor_warp_input_validation() -> None:
    parsing, densepose = _toy_maps()
    with pytest.raises(ValueError):
        P.tutor_warp_input(parsing, densepose, np.zeros((25, 3)))  # BODY_25 is not the tutor's input
    bad = densepose.copy()
    bad[0, 0] = 25
    with pytest.raises(ValueError):
        P.tutor_warp_input(parsing, bad, np.zeros((18, 3)))
    with pytest.raises(ValueError):
        P.tutor_warp_input(parsing, densepose[:-1], np.zeros((18, 3)))
    with pytest.raises(ValueError):
        P.densepose_one_hot(torch.tensor([[0.5, 1.0]]))


def test_tutor_gen_preserve_formulas() -> None:
    parsing, densepose = _toy_maps()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    img = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0
    out = P.tutor_gen_preserve(image, parsing, densepose)
    hands = np.isin(parsing, (11, 13)) & np.isin(densepose, (3, 4))
    np.testing.assert_array_equal(out.hand_mask[0].numpy(), hands)
    preserve = np.isin(parsing, (1, 12, 5, 6, 8, 9, 10)) | hands
    np.testing.assert_array_equal(out.preserve_mask[0].numpy(), preserve)
    assert out.preserve_region.shape == (3, H, W)
    torch.testing.assert_close(out.preserve_region, img * torch.from_numpy(preserve).float())
    arms_dp = np.isin(densepose, range(15, 23))
    np.testing.assert_array_equal(out.dense_preserve_mask[0].numpy(), arms_dp & ~np.isin(parsing, (4, 7)))
    # a soft target cloth mask (the warped unpaired edge in stages 3/4)
    target = rng.uniform(0, 1, size=(1, H, W)).astype(np.float32)
    soft = P.tutor_gen_preserve(img, parsing, densepose, target_cloth_mask=torch.from_numpy(target))
    torch.testing.assert_close(soft.dense_preserve_mask, torch.from_numpy(arms_dp * (1 - target)).float())
    torch.testing.assert_close(soft.preserve_region, out.preserve_region)
    with pytest.raises(ValueError):
        P.tutor_gen_preserve(image, parsing, densepose, target_cloth_mask=np.zeros((2, H, W)))


def test_tutor_gen_input_channel_order(sample) -> None:
    p = sample[2]
    pre = P.tutor_gen_preserve(p.image, p.parsing, p.densepose)
    warped = torch.full((3, 256, 192), 0.25)
    edge = torch.full((1, 256, 192), 0.5)
    x = P.tutor_gen_input(pre, warped, edge)
    assert x.shape == (8, 256, 192)
    assert torch.equal(x[0:3], pre.preserve_region)
    assert torch.equal(x[3:6], warped) and torch.equal(x[6:7], edge)
    assert torch.equal(x[7:8], pre.dense_preserve_mask)
    # on an exact synthetic person the preserved region never overlaps the garment
    assert not (pre.preserve_mask[0].bool() & torch.from_numpy(p.garment_mask)).any()
    assert pre.hand_mask.sum() > 0
    with pytest.raises(ValueError):
        P.tutor_gen_input(pre, edge, warped)


def test_person_clothes_targets(sample) -> None:
    p = sample[0]
    clothes, mask = P.person_clothes(p.image, p.parsing)
    assert clothes.shape == (3, 256, 192) and mask.shape == (1, 256, 192)
    np.testing.assert_array_equal(mask[0].numpy().astype(bool), p.garment_mask)
    img = P.image_to_tensor(p.image)
    assert img.min() >= -1 and img.max() <= 1
    torch.testing.assert_close(clothes, img * mask)
    assert (clothes[:, ~torch.from_numpy(p.garment_mask)] == 0).all()


def test_image_to_tensor() -> None:
    img = np.zeros((4, 5, 3), np.uint8)
    img[..., 0] = 255
    t = P.image_to_tensor(img)
    assert t.shape == (3, 4, 5) and t[0].eq(1).all() and t[1].eq(-1).all()
    batch = P.image_to_tensor(np.stack([img, img]))
    assert batch.shape == (2, 3, 4, 5)
    f = torch.rand(2, 3, 4, 5) * 2 - 1
    assert torch.equal(P.image_to_tensor(f), f)
    with pytest.raises(TypeError):
        P.image_to_tensor(torch.zeros(3, 4, 5, dtype=torch.uint8))
    with pytest.raises(ValueError):
        P.image_to_tensor(np.zeros((4, 5), np.uint8))


def test_no_ray_import() -> None:
    import subprocess
    import sys

    code = "import sys, pfafn.person, pfafn.synthetic.world; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
