"""The procedural try-on world: determinism, ground truth, label consistency, sizes, OpenPose JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from pfafn.synthetic import labels as L
from pfafn.synthetic.world import (
    GarmentRender,
    PersonRender,
    SyntheticWorld,
    WorldConfig,
    corrupt_parsing,
    decode_openpose,
    encode_openpose,
    encode_openpose_json,
)

PRODUCED_LABELS = {L.BACKGROUND, L.HAIR, L.UPPER_CLOTHES, L.PANTS, L.LEFT_LEG, L.RIGHT_LEG, L.LEFT_ARM, L.FACE,
                   L.RIGHT_ARM}


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(12, 12, WorldConfig(seed=3))


@pytest.fixture(scope="module")
def renders(world: SyntheticWorld) -> list[PersonRender]:
    return [world.render_person(i) for i in range(world.n_models)]


def _assert_person_equal(a: PersonRender, b: PersonRender) -> None:
    for field in ("image", "parsing", "densepose", "keypoints", "garment_mask", "garment_grid"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def _sample_bilinear(image: np.ndarray, grid: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sample an H×W×3 image at normalised (align_corners=True) grid positions of the masked pixels → n×3."""
    h, w = image.shape[:2]
    gx = (grid[..., 0][mask] + 1.0) * (w - 1) / 2.0
    gy = (grid[..., 1][mask] + 1.0) * (h - 1) / 2.0
    return np.stack(
        [ndimage.map_coordinates(image[..., c].astype(np.float64), [gy, gx], order=1) for c in range(3)], axis=1
    )


# --- configuration -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 250},
        {"width": 190},
        {"height": 0},
        {"height": -32},
        {"width": 16},
        {"height": 256.0},
        {"parsing_noise": 1.5},
        {"parsing_noise": -0.1},
        {"seed": -1},
    ],
)
def test_invalid_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WorldConfig(**kwargs)


def test_world_arguments_and_ids() -> None:
    with pytest.raises(ValueError):
        SyntheticWorld(0, 3)
    with pytest.raises(ValueError):
        SyntheticWorld(3, 0)
    w = SyntheticWorld(5, 3)
    assert (w.model_id(4), w.garment_id(2)) == ("m00004", "g00002")
    assert [w.worn_garment(i) for i in range(5)] == [0, 1, 2, 0, 1]
    with pytest.raises(IndexError):
        w.render_person(5)
    with pytest.raises(IndexError):
        w.render_garment(3)
    with pytest.raises(IndexError):
        w.render_person(0, -1)


def test_unpaired_garments_are_distinct_and_deterministic() -> None:
    w = SyntheticWorld(6, 10, WorldConfig(seed=1))
    for i in range(6):
        picks = w.unpaired_garments(i, 4)
        assert len(picks) == len(set(picks)) == 4
        assert w.worn_garment(i) not in picks
        assert all(0 <= j < 10 for j in picks)
        assert picks == SyntheticWorld(60, 10, WorldConfig(seed=1)).unpaired_garments(i, 4)
    assert len(w.unpaired_garments(0, 50)) == 9


# --- determinism ---------------------------------------------------------------------------------------------------
def test_same_seed_same_arrays_and_order_independence(world: SyntheticWorld, renders: list[PersonRender]) -> None:
    other = SyntheticWorld(500, 40, WorldConfig(seed=3))  # different counts, garment 7 is still model 7's
    for i in (7, 2):  # reverse order of the fixture's rendering
        _assert_person_equal(renders[i], other.render_person(i, world.worn_garment(i)))
    again = SyntheticWorld(12, 12, WorldConfig(seed=3))
    _assert_person_equal(renders[5], again.render_person(5))
    for j in (0, 9):
        a, b = world.render_garment(j), other.render_garment(j)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)


def test_different_seed_different_world(renders: list[PersonRender]) -> None:
    other = SyntheticWorld(12, 12, WorldConfig(seed=4))
    assert not np.array_equal(renders[0].image, other.render_person(0).image)


# --- renders -------------------------------------------------------------------------------------------------------
def test_render_types_shapes_and_dtypes(world: SyntheticWorld, renders: list[PersonRender]) -> None:
    g = world.render_garment(0)
    assert isinstance(g, GarmentRender)
    assert g.image.shape == (256, 192, 3) and g.image.dtype == np.uint8
    assert g.mask.shape == (256, 192) and g.mask.dtype == np.bool_
    p = renders[0]
    assert p.image.shape == (256, 192, 3) and p.image.dtype == np.uint8
    assert p.parsing.shape == (256, 192) and p.parsing.dtype == np.uint8
    assert p.densepose.shape == (256, 192) and p.densepose.dtype == np.uint8
    assert p.keypoints.shape == (18, 3) and p.keypoints.dtype == np.float32
    assert p.garment_mask.dtype == np.bool_
    assert p.garment_grid.shape == (256, 192, 2) and p.garment_grid.dtype == np.float32


def test_parsing_labels_and_garment_mask(renders: list[PersonRender]) -> None:
    for p in renders:
        assert set(np.unique(p.parsing).tolist()) <= PRODUCED_LABELS
        np.testing.assert_array_equal(p.garment_mask, p.parsing == L.UPPER_CLOTHES)
        assert p.garment_mask.mean() > 0.08  # a top is clearly visible
        for label in (L.HAIR, L.FACE, L.PANTS):
            assert (p.parsing == label).any(), label
        assert ((p.parsing == L.LEFT_ARM) | (p.parsing == L.RIGHT_ARM)).any()
        # the person stands in the middle of a background
        assert p.parsing[0, 0] == p.parsing[0, -1] == L.BACKGROUND


def test_densepose_only_where_the_body_is(renders: list[PersonRender]) -> None:
    for p in renders:
        dp = p.densepose
        assert int(dp.max()) <= 24
        assert not ((dp > 0) & (p.parsing == L.BACKGROUND)).any()
        assert (dp[p.garment_mask] > 0).all()  # clothes are body surface for DensePose
        arms = (p.parsing == L.LEFT_ARM) | (p.parsing == L.RIGHT_ARM)
        assert (dp[arms] > 0).all()
        hands = np.isin(dp, L.DP_HAND_PARTS)
        assert hands.any()
        assert arms[hands].mean() > 0.98  # hands are arm-labelled skin (the reference's hand rule)
        assert np.isin(dp, L.DP_ARM_PARTS).any()
        assert np.isin(dp, L.DP_TORSO_PARTS).any() and np.isin(dp, L.DP_HEAD).any()
        legs_or_pants = np.isin(p.parsing, (L.PANTS, L.LEFT_LEG, L.RIGHT_LEG))
        assert np.isin(dp[legs_or_pants], (2,) + L.DP_UPPER_LEG_LEFT + L.DP_UPPER_LEG_RIGHT
                       + L.DP_LOWER_LEG_LEFT + L.DP_LOWER_LEG_RIGHT).all()


def test_keypoints_inside_and_consistent_with_body(renders: list[PersonRender]) -> None:
    k = {name: i for i, name in enumerate(L.COCO18_KEYPOINTS)}
    for p in renders:
        kp = p.keypoints
        present = kp[:, 2] > 0
        missing = ~present
        assert (kp[missing] == 0).all()
        assert (kp[present, 2] <= 1).all()
        assert (kp[present, 0] >= 0).all() and (kp[present, 0] <= 191).all()
        assert (kp[present, 1] >= 0).all() and (kp[present, 1] <= 255).all()
        for name in ("nose", "neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip", "right_eye",
                     "left_eye"):
            assert present[k[name]], name
        neck_y = kp[k["neck"], 1]
        hips_y = (kp[k["right_hip"], 1] + kp[k["left_hip"], 1]) / 2
        assert kp[k["nose"], 1] < neck_y < hips_y
        assert hips_y - neck_y > 60  # a torso, not a point
        # front view: the person's right side is on the image left
        assert kp[k["right_shoulder"], 0] < kp[k["left_shoulder"], 0]
        assert kp[k["right_hip"], 0] < kp[k["left_hip"], 0]
        assert kp[k["right_eye"], 0] < kp[k["left_eye"], 0]
        # body keypoints sit on the person
        for name in ("nose", "neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip", "right_elbow",
                     "left_elbow"):
            if present[k[name]]:
                x, y = int(round(kp[k[name], 0])), int(round(kp[k[name], 1]))
                assert p.parsing[y, x] != L.BACKGROUND, name


def test_unpaired_ground_truth_carries_the_garment(world: SyntheticWorld, renders: list[PersonRender]) -> None:
    for i in range(6):
        j = world.unpaired_garments(i, 1)[0]
        own = renders[i]
        gt = world.render_person(i, j)
        product = world.render_garment(j)
        assert not np.array_equal(gt.image, own.image)
        assert np.abs(gt.image.astype(np.int16) - own.image).mean() > 1.0
        assert gt.image.shape == product.image.shape and not np.array_equal(gt.image, product.image)
        np.testing.assert_array_equal(gt.garment_mask, gt.parsing == L.UPPER_CLOTHES)
        # mean colour of the worn garment ≈ mean colour of the product garment (shading costs a little)
        worn_mean = gt.image[gt.garment_mask].mean(0) / 255.0
        product_mean = product.image[product.mask].mean(0) / 255.0
        assert np.abs(worn_mean - product_mean).max() < 0.12, (i, j, worn_mean, product_mean)
        # only the garment changes: away from both garments, from pixels whose label changed (skin a sleeve
        # covered) and from hair (long hair falls over the garment, with anti-aliased edges) pixels are identical
        changed = gt.garment_mask | own.garment_mask | (gt.parsing != own.parsing) | (own.parsing == L.HAIR)
        keep = ~ndimage.binary_dilation(changed, iterations=2)
        assert keep.mean() > 0.3
        np.testing.assert_array_equal(gt.image[keep], own.image[keep])
        np.testing.assert_array_equal(gt.densepose[keep], own.densepose[keep])


def test_worn_garment_is_a_warp_of_the_product_photo(world: SyntheticWorld) -> None:
    """``garment_grid`` maps each worn garment pixel to the product pixel it shows: texture is carried over."""
    checked = 0
    for i in range(world.n_models):
        j = (i + 5) % world.n_garments
        p = world.render_person(i, j)
        product = world.render_garment(j)
        m = p.garment_mask
        grid = p.garment_grid
        assert (grid[~m] == -2).all()
        assert (np.abs(grid[m]) <= 1.0).all()
        gx = np.rint((grid[..., 0][m] + 1) * 191 / 2).astype(int)
        gy = np.rint((grid[..., 1][m] + 1) * 255 / 2).astype(int)
        assert product.mask[gy, gx].mean() > 0.98  # sources lie on the product garment
        src = _sample_bilinear(product.image, grid, m)
        worn = p.image[m].astype(np.float64)
        assert np.abs(src - worn).mean() < 0.1 * 255
        if world.garment_spec(j).pattern != "solid":
            # the texture is carried over: colour deviations from the mean agree pixel by pixel
            a = src - src.mean(0)
            b = worn - worn.mean(0)
            corr = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
            assert corr > 0.6, (i, j, corr)
            checked += 1
    assert checked >= 3


def test_arms_in_front_occlude_the_garment() -> None:
    w = SyntheticWorld(40, 40, WorldConfig(seed=0))
    found = 0
    for i in range(40):
        info = w.model_info(i)
        if not info["arms_in_front"] or w.garment_info(w.worn_garment(i))["kind"] == "long_sleeve":
            continue
        p = w.render_person(i)
        arms = np.isin(p.parsing, L.ARM_LABELS)
        # arm pixels with garment on both sides (horizontally or vertically): a forearm across the top
        g = p.garment_mask
        across = (ndimage.shift(g, (0, 8), order=0) & ndimage.shift(g, (0, -8), order=0)) | (
            ndimage.shift(g, (8, 0), order=0) & ndimage.shift(g, (-8, 0), order=0)
        )
        assert (arms & across).sum() > 30, i
        found += 1
        if found == 2:
            break
    assert found == 2


def test_garment_products_and_hard_cases() -> None:
    w = SyntheticWorld(1, 40, WorldConfig(seed=0))
    infos = [w.garment_info(j) for j in range(40)]
    assert {i["kind"] for i in infos} == {"tee", "long_sleeve", "tank"}
    assert {"solid", "stripes", "dots", "checks"} <= {i["pattern"] for i in infos}
    assert any(i["logo"] for i in infos)
    assert {"white", "off_white", "shadow"} <= {i["background"] for i in infos}
    assert any(i["color_class"] == "near_white" for i in infos)
    for j in range(6):
        g = w.render_garment(j)
        assert 0.2 < g.mask.mean() < 0.8
        assert not g.mask[0].any() and not g.mask[-1].any() and not g.mask[:, 0].any() and not g.mask[:, -1].any()
        background = g.image[~ndimage.binary_dilation(g.mask, iterations=3)]
        assert background.mean() > 200  # plain light background
        labels, n = ndimage.label(g.mask)
        assert n == 1  # one garment in one piece


def test_parsing_noise_zero_is_exact_and_positive_is_close(renders: list[PersonRender]) -> None:
    exact_world = SyntheticWorld(12, 12, WorldConfig(seed=3, parsing_noise=0.0))
    np.testing.assert_array_equal(exact_world.noisy_parsing(1, parsing=renders[1].parsing), renders[1].parsing)
    np.testing.assert_array_equal(exact_world.noisy_parsing(2), renders[2].parsing)
    noisy_world = SyntheticWorld(12, 12, WorldConfig(seed=3, parsing_noise=0.5))
    for i in range(4):
        exact = renders[i].parsing
        noisy = noisy_world.noisy_parsing(i, parsing=exact)
        assert noisy.dtype == np.uint8 and noisy.shape == exact.shape
        assert not np.array_equal(noisy, exact)
        a, b = exact == L.UPPER_CLOTHES, noisy == L.UPPER_CLOTHES
        assert (a & b).sum() / (a | b).sum() > 0.6
        assert (noisy == exact).mean() > 0.85
        assert set(np.unique(noisy).tolist()) <= PRODUCED_LABELS | {L.NOISE}
        np.testing.assert_array_equal(noisy, noisy_world.noisy_parsing(i, parsing=exact))  # deterministic
    full = SyntheticWorld(12, 12, WorldConfig(seed=3, parsing_noise=1.0)).noisy_parsing(0, parsing=renders[0].parsing)
    a, b = renders[0].parsing == L.UPPER_CLOTHES, full == L.UPPER_CLOTHES
    assert (a & b).sum() / (a | b).sum() > 0.6
    with pytest.raises(ValueError):
        corrupt_parsing(renders[0].parsing, 2.0, np.random.default_rng(0))


@pytest.mark.parametrize("size", [(128, 96), (512, 384), (256, 256)])
def test_other_sizes_scale_consistently(size: tuple[int, int], renders: list[PersonRender]) -> None:
    h, w = size
    world = SyntheticWorld(12, 12, WorldConfig(height=h, width=w, seed=3))
    p = world.render_person(0)
    g = world.render_garment(0)
    assert p.image.shape == (h, w, 3) and p.parsing.shape == (h, w) and g.mask.shape == (h, w)
    np.testing.assert_array_equal(p.garment_mask, p.parsing == L.UPPER_CLOTHES)
    base = renders[0]
    unit = min(h / 256, w / 192)
    offset = np.array([(w - 192 * unit) / 2, (h - 256 * unit) / 2])
    both = (p.keypoints[:, 2] > 0) & (base.keypoints[:, 2] > 0)
    expected = base.keypoints[both, :2] * unit + offset
    np.testing.assert_allclose(p.keypoints[both, :2], expected, atol=0.01 * max(h, w))
    # the garment covers the same part of the frame
    frac_base = base.garment_mask.mean()
    assert abs(p.garment_mask.mean() * (h * w) / (unit * unit * 256 * 192) - frac_base) < 0.02


# --- OpenPose JSON -------------------------------------------------------------------------------------------------
def test_openpose_roundtrip(renders: list[PersonRender]) -> None:
    kp = renders[0].keypoints
    obj = encode_openpose(kp)
    person = obj["people"][0]
    assert len(person["pose_keypoints"]) == 54 and person["pose_keypoints"] == person["pose_keypoints_2d"]
    text = encode_openpose_json(kp)
    np.testing.assert_allclose(decode_openpose(text), kp, atol=1e-3)
    np.testing.assert_allclose(decode_openpose(text.encode()), kp, atol=1e-3)
    legacy_only = {"people": [{"pose_keypoints": person["pose_keypoints"]}]}
    current_only = json.loads(encode_openpose_json(kp, keys=("pose_keypoints_2d",)))
    assert "pose_keypoints" not in current_only["people"][0]
    np.testing.assert_allclose(decode_openpose(legacy_only), kp, atol=1e-3)
    np.testing.assert_allclose(decode_openpose(current_only), kp, atol=1e-3)


def test_openpose_edge_cases() -> None:
    assert (decode_openpose('{"people": []}') == 0).all()
    body25 = np.arange(75, dtype=np.float32)
    out = decode_openpose({"people": [{"pose_keypoints_2d": body25.tolist()}]})
    np.testing.assert_array_equal(out[8], body25.reshape(25, 3)[9])  # right hip skips BODY_25's MidHip
    np.testing.assert_array_equal(out[17], body25.reshape(25, 3)[18])
    for bad in ('{"people": [{"pose_keypoints": [1, 2]}]}', "not json", '{"people": [{}]}', "[]",
                '{"people": [{"pose_keypoints": [NaN, 1, 1]}]}'):
        with pytest.raises(ValueError):
            decode_openpose(bad)
    with pytest.raises(ValueError):
        encode_openpose(np.zeros((17, 3)))
