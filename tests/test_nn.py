"""pfafn.nn: published checkpoint layout, correlation semantics, flow conventions, shapes.

Expected keys, shapes and counts below are written from the original module definitions (PF-AFN_test/models/afwm.py, networks.py), not
from the modules under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pfafn.nn import (
    AFWM,
    NetworkWidths,
    ResUnetGenerator,
    check_image_size,
    compose_flows,
    identity_grid,
    local_correlation,
    offset_to_grid,
    upsample_flow,
    warp,
)
from tests.model_helpers import SMALL

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _meta(factory):
    with torch.device("meta"):
        return factory()


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Published state_dict layouts (warp_model_final.pth, gen_model_final.pth)


def _expected_warp_shapes(input_nc: int) -> dict[str, tuple]:
    chans = [64, 128, 256, 256, 256]
    shapes: dict[str, tuple] = {}

    def bn(prefix, c):
        for name in BN:
            shapes[f"{prefix}.{name}"] = () if name == "num_batches_tracked" else (c,)

    for branch, c_first in (("image_features", 3), ("cond_features", input_nc)):
        for i, c_out in enumerate(chans):
            c_in = c_first if i == 0 else chans[i - 1]
            bn(f"{branch}.encoders.{i}.0.block.0", c_in)
            shapes[f"{branch}.encoders.{i}.0.block.2.weight"] = (c_out, c_in, 3, 3)
            for r in (1, 2):
                bn(f"{branch}.encoders.{i}.{r}.block.0", c_out)
                bn(f"{branch}.encoders.{i}.{r}.block.3", c_out)
                shapes[f"{branch}.encoders.{i}.{r}.block.2.weight"] = (c_out, c_out, 3, 3)
                shapes[f"{branch}.encoders.{i}.{r}.block.5.weight"] = (c_out, c_out, 3, 3)
    for fpn in ("image_FPN", "cond_FPN"):
        for j, c in enumerate((256, 256, 256, 128, 64)):
            shapes[f"{fpn}.adaptive.{j}.weight"] = (256, c, 1, 1)
            shapes[f"{fpn}.adaptive.{j}.bias"] = (256,)
            shapes[f"{fpn}.smooth.{j}.weight"] = (256, 256, 3, 3)
            shapes[f"{fpn}.smooth.{j}.bias"] = (256,)
    for net, c_in in (("netMain", 49), ("netRefine", 512)):
        for j in range(5):
            for idx, (o, i) in zip((0, 2, 4, 6), ((128, c_in), (64, 128), (32, 64), (2, 32))):
                shapes[f"aflow_net.{net}.{j}.{idx}.weight"] = (o, i, 3, 3)
                shapes[f"aflow_net.{net}.{j}.{idx}.bias"] = (o,)
    return shapes


def _expected_generator_shapes(input_nc: int) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}

    def bn(prefix, c):
        for name in BN:
            shapes[f"{prefix}.{name}"] = () if name == "num_batches_tracked" else (c,)

    def res(prefix, c):
        shapes[f"{prefix}.block.0.weight"] = (c, c, 3, 3)
        bn(f"{prefix}.block.1", c)
        shapes[f"{prefix}.block.3.weight"] = (c, c, 3, 3)
        bn(f"{prefix}.block.4", c)

    p = "model.model."
    shapes[p + "0.weight"] = (64, input_nc, 3, 3)
    res(p + "2", 64)
    res(p + "3", 64)
    shapes[p + "6.weight"] = (4, 128, 3, 3)
    # L1..L3: (outer, inner) = (64, 128), (128, 256), (256, 512)
    for outer, inner in ((64, 128), (128, 256), (256, 512)):
        p = p + ("4.model." if p == "model.model." else "5.model.")
        shapes[p + "0.weight"] = (inner, outer, 3, 3)
        bn(p + "1", inner)
        res(p + "3", inner)
        res(p + "4", inner)
        shapes[p + "7.weight"] = (outer, 2 * inner, 3, 3)
        bn(p + "8", outer)
        res(p + "10", outer)
        res(p + "11", outer)
    p = p + "5.model."
    shapes[p + "0.weight"] = (512, 512, 3, 3)
    res(p + "2", 512)
    res(p + "3", 512)
    shapes[p + "5.weight"] = (512, 512, 3, 3)
    bn(p + "6", 512)
    res(p + "8", 512)
    res(p + "9", 512)
    return shapes


def _shapes(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_student_warp_state_dict_is_the_published_one():
    warp = _meta(lambda: AFWM(3))
    shapes = _shapes(warp)
    assert shapes == _expected_warp_shapes(3)
    assert len(shapes) == 420
    assert _n_params(warp) == 29_304_416
    # per-part sizes quoted by the reference: encoder 9.374M, FPN 3.197M, aflow_net 4.161M
    assert round(_n_params(warp.image_features) / 1e6, 3) == 9.374
    assert round(_n_params(warp.cond_FPN) / 1e6, 3) == 3.197
    assert round(_n_params(warp.aflow_net) / 1e6, 3) == 4.161
    assert shapes["aflow_net.netMain.0.0.weight"] == (128, 49, 3, 3)
    assert shapes["aflow_net.netRefine.4.0.weight"] == (128, 512, 3, 3)
    assert shapes["image_FPN.adaptive.4.weight"] == (256, 64, 1, 1)


def test_tutor_warp_differs_only_in_the_first_person_layer():
    student, tutor = _shapes(_meta(lambda: AFWM(3))), _shapes(_meta(lambda: AFWM(45)))
    assert tutor == _expected_warp_shapes(45)
    assert _n_params(_meta(lambda: AFWM(45))) == 29_328_692
    differing = {k for k in student if student[k] != tutor[k]}
    assert differing == {
        "cond_features.encoders.0.0.block.0.weight",
        "cond_features.encoders.0.0.block.0.bias",
        "cond_features.encoders.0.0.block.0.running_mean",
        "cond_features.encoders.0.0.block.0.running_var",
        "cond_features.encoders.0.0.block.2.weight",
    }
    assert tutor["cond_features.encoders.0.0.block.2.weight"] == (64, 45, 3, 3)


def test_generator_state_dict_is_the_published_one():
    gen = _meta(lambda: ResUnetGenerator(7, 4))
    shapes = _shapes(gen)
    assert shapes == _expected_generator_shapes(7)
    assert len(shapes) == 261
    assert _n_params(gen) == 43_899_968
    keys = list(shapes)
    assert keys[0] == "model.model.0.weight" and keys[-1] == "model.model.6.weight"
    assert not any(k.endswith(".bias") and "conv" in k for k in keys)
    conv_biases = [k for k in keys if k.endswith(".bias") and len(shapes[k[: -len("bias")] + "weight"]) == 4]
    assert conv_biases == []
    for key, shape in {
        "model.model.2.block.0.weight": (64, 64, 3, 3),
        "model.model.4.model.0.weight": (128, 64, 3, 3),
        "model.model.4.model.7.weight": (64, 256, 3, 3),
        "model.model.4.model.5.model.5.model.7.weight": (256, 1024, 3, 3),
        "model.model.4.model.5.model.5.model.5.model.5.weight": (512, 512, 3, 3),
    }.items():
        assert shapes[key] == shape
    tutor = _meta(lambda: ResUnetGenerator(8, 4))
    assert _shapes(tutor) == _expected_generator_shapes(8)
    assert _n_params(tutor) == 43_900_544


def test_total_size_matches_reference():
    warp, gen = _meta(lambda: AFWM(3)), _meta(lambda: ResUnetGenerator(7, 4))
    n_bytes = sum(t.numel() * 4 for m in (warp, gen) for k, t in m.state_dict().items() if "num_batches" not in k)
    assert round((_n_params(warp) + _n_params(gen)) / 1e6, 1) == 73.2
    assert round(n_bytes / 1e6, 1) == 293.0


# ---------------------------------------------------------------------------------------------------------------
# Correlation


def _naive_correlation(first, second, d):
    b, c, h, w = first.shape
    k = 2 * d + 1
    out = torch.zeros(b, k * k, h, w, dtype=first.dtype)
    for dy in range(-d, d + 1):
        for dx in range(-d, d + 1):
            ch = (dy + d) * k + (dx + d)
            for y in range(h):
                for x in range(w):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        out[:, ch, y, x] = (first[:, :, y, x] * second[:, :, yy, xx]).sum(1) / c
    return out


@pytest.mark.parametrize("d, slab_bytes", [(3, 1 << 30), (1, 1 << 30), (3, 1), (3, 2 * 5 * 9 * 8 * 4)])
def test_correlation_equals_per_pixel_definition(d, slab_bytes, monkeypatch):
    # slab_bytes sets the CPU band height: whole image, 1 row, 4 rows (bands of 4 + 2)
    monkeypatch.setattr("pfafn.nn.correlation._CPU_SLAB_BYTES", slab_bytes)
    g = torch.Generator().manual_seed(0)
    first = torch.randn(2, 5, 6, 9, generator=g, dtype=torch.float64)
    second = torch.randn(2, 5, 6, 9, generator=g, dtype=torch.float64)
    out = local_correlation(first, second, d)
    assert out.shape == (2, (2 * d + 1) ** 2, 6, 9)
    torch.testing.assert_close(out, _naive_correlation(first, second, d), rtol=0, atol=1e-12)


def test_correlation_channel_order_and_argument_order():
    # a single bright pixel in `second` at (y, x) = (4, 4): channel k at (4 - dy, 4 - dx) sees it.
    first = torch.ones(1, 2, 9, 9)
    second = torch.zeros(1, 2, 9, 9)
    second[0, :, 4, 4] = 1.0
    out = local_correlation(first, second)
    for k in range(49):
        dy, dx = k // 7 - 3, k % 7 - 3
        assert out[0, k, 4 - dy, 4 - dx] == 1.0
        assert out[0, k].sum() == 1.0
    # swapping the arguments is not the same operation
    assert not torch.equal(local_correlation(second, first), out)


def test_correlation_gradcheck(monkeypatch):
    monkeypatch.setattr("pfafn.nn.correlation._CPU_SLAB_BYTES", 2 * 5 * 8 * 2)  # bands of 2 rows
    g = torch.Generator().manual_seed(1)
    first = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    second = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    # d = 3 (49 channels, displacements larger than the image): randomized-projection gradcheck
    assert torch.autograd.gradcheck(local_correlation, (first, second), fast_mode=True)
    # d = 1: the full Jacobian
    small = tuple(t[..., :3, :4].detach().clone().requires_grad_() for t in (first, second))
    assert torch.autograd.gradcheck(lambda a, b: local_correlation(a, b, 1), small)


def test_correlation_under_autocast_accumulates_in_fp32():
    g = torch.Generator().manual_seed(2)
    first, second = torch.randn(2, 2, 64, 8, 6, generator=g)
    ref = local_correlation(first, second)
    out = local_correlation(first.bfloat16(), second.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.03, rtol=0.03)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert local_correlation(first, second).dtype == torch.float32


def test_correlation_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        local_correlation(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 6))


# ---------------------------------------------------------------------------------------------------------------
# Flow conventions


def test_zero_offsets_give_identity_grid_and_identity_warp():
    grid = offset_to_grid(torch.zeros(2, 2, 5, 7))
    torch.testing.assert_close(grid[0, 0, 0], torch.linspace(-1, 1, 7))  # x first, along the width
    torch.testing.assert_close(grid[0, 1, :, 0], torch.linspace(-1, 1, 5))
    image = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(warp(image, grid), image, atol=1e-6, rtol=0)
    torch.testing.assert_close(warp(image, grid, "zeros"), image, atol=1e-6, rtol=0)


def test_pixel_offset_moves_by_one_pixel():
    image = torch.randn(1, 1, 6, 8)
    offset = torch.zeros(1, 2, 6, 8)
    offset[:, 0] = 1.0  # sample one pixel to the right
    shifted = warp(image, offset_to_grid(offset))
    torch.testing.assert_close(shifted[..., :-1], image[..., 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted[..., -1], image[..., -1], atol=1e-5, rtol=0)  # border padding
    assert torch.all(warp(image, offset_to_grid(offset), "zeros")[..., -1].abs() < 1e-5)  # zeros padding


def test_composition_of_identity_grids_is_identity():
    ident = identity_grid(2, 6, 8)
    torch.testing.assert_close(compose_flows(ident, ident), ident, atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(3)
    other = ident + 0.2 * torch.rand(2, 2, 6, 8, generator=g) - 0.1
    torch.testing.assert_close(compose_flows(other, ident), other, atol=1e-6, rtol=0)
    torch.testing.assert_close(compose_flows(ident, other), other.clamp(-1, 1), atol=1e-6, rtol=0)


def test_flows_stay_fp32_under_autocast():
    offset = torch.randn(1, 2, 6, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = offset_to_grid(offset)
        assert grid.dtype == torch.float32
        assert compose_flows(grid, grid).dtype == torch.float32
        assert warp(torch.randn(1, 3, 6, 8).bfloat16(), grid).dtype == torch.float32
        assert upsample_flow(grid).shape == (1, 2, 12, 16)


def test_upsample_keeps_normalized_values():
    ident = identity_grid(1, 4, 6)
    up = upsample_flow(ident)
    assert up.shape == (1, 2, 8, 12)
    assert up.min() >= -1 and up.max() <= 1  # values are coordinates, not rescaled by 2
    expected = F.interpolate(ident, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, expected)


# ---------------------------------------------------------------------------------------------------------------
# Sizes and training outputs


@pytest.mark.parametrize("hw", [(250, 190), (256, 190), (32, 32), (96, 32)])
def test_bad_sizes_are_refused(hw):
    with pytest.raises(ValueError, match="multiples of 32"):
        check_image_size(*hw)
    warp_net = AFWM(3, SMALL).eval()
    x = torch.zeros(1, 3, *hw)
    with pytest.raises(ValueError, match=f"{hw[0]}×{hw[1]}"):
        warp_net(x, x)


@pytest.mark.parametrize("hw", [(256, 192), (512, 384), (1024, 768), (128, 96), (64, 64)])
def test_good_sizes_are_accepted(hw):
    check_image_size(*hw)


@pytest.fixture(scope="module")
def small_warp():
    torch.manual_seed(0)
    return AFWM(3, SMALL).eval()


def test_intermediates_have_documented_shapes(small_warp):
    b, h, w = 2, 128, 96
    g = torch.Generator().manual_seed(4)
    person, garment = torch.rand(2, b, 3, h, w, generator=g) * 2 - 1
    mask = (torch.rand(b, 1, h, w, generator=g) > 0.5).float()
    with torch.no_grad():
        full = small_warp(person, garment, mask, intermediates=True)
        lean = small_warp(person, garment, mask)
    assert full.warped_garment.shape == (b, 3, h, w) and full.flow.shape == (b, 2, h, w)
    assert full.flow.dtype == torch.float32 and full.warped_mask.shape == (b, 1, h, w)
    sizes = [(h // 2**k, w // 2**k) for k in (4, 3, 2, 1, 0)]  # flows: H/16 ... H
    assert [tuple(f.shape) for f in full.flows] == [(b, 2, *s) for s in sizes]
    assert [tuple(f.shape) for f in full.person_features] == [(b, SMALL.fpn_dim, sh // 2, sw // 2) for sh, sw in sizes]
    assert [tuple(o.shape) for o in full.offsets] == [(b, 2, sh // 2, sw // 2) for sh, sw in sizes for _ in (0, 1)]
    assert [tuple(x.shape) for x in full.warped_garments] == [(b, 3, *s) for s in sizes]
    assert [tuple(x.shape) for x in full.warped_masks] == [(b, 1, *s) for s in sizes]
    torch.testing.assert_close(full.flows[-1], full.flow)
    torch.testing.assert_close(full.warped_garments[-1], full.warped_garment)
    torch.testing.assert_close(full.warped_masks[-1], full.warped_mask)
    # inference pays nothing for them, and gets the same result
    assert lean.flows is None and lean.offsets is None and lean.person_features is None and lean.warped_masks is None
    torch.testing.assert_close(lean.flow, full.flow)
    # person features are the person FPN, coarse -> fine
    torch.testing.assert_close(full.person_features[0], small_warp.encode_person(person)[-1])
    no_mask = small_warp(person, garment, intermediates=True)
    assert no_mask.warped_mask is None and no_mask.warped_masks is None and len(no_mask.warped_garments) == 5


def test_prewarp_uses_detached_flow(small_warp):
    torch.manual_seed(5)
    person, garment = torch.rand(2, 1, 3, 64, 64) * 2 - 1
    out = small_warp(person, garment, intermediates=True)
    main0 = list(small_warp.aflow_net.netMain[0].parameters())
    # level-1 netMain offset sees level 0 only through the detached pre-warp: no gradient to netMain[0]
    grads = torch.autograd.grad(out.offsets[2].square().sum(), main0, allow_unused=True)
    assert all(gr is None or torch.all(gr == 0) for gr in grads)
    # the level-1 refine offset sees level 0 through the (non-detached) warp of the original feature
    grads = torch.autograd.grad(out.offsets[3].square().sum(), main0, allow_unused=True)
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)


def test_offset_heads_are_fp32_under_autocast(small_warp):
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = small_warp(x, x, intermediates=True)
    assert all(o.dtype == torch.float32 for o in out.offsets)
    assert out.flow.dtype == torch.float32 and out.warped_garment.dtype == torch.float32
    assert out.person_features[0].dtype == torch.bfloat16


def test_generator_shapes_and_checks():
    gen = ResUnetGenerator(7, 4, ngf=4).eval()
    with torch.no_grad():
        assert gen(torch.zeros(2, 7, 64, 96)).shape == (2, 4, 64, 96)
    with pytest.raises(ValueError, match="divisible by 32"):
        gen(torch.zeros(1, 7, 80, 96))
    with pytest.raises(ValueError, match="B×7×H×W"):
        gen(torch.zeros(1, 8, 64, 96))
    deeper = ResUnetGenerator(7, 4, num_downs=6, ngf=4)
    assert "model.model.4.model.5.model.5.model.5.model.5.model.0.weight" in deeper.state_dict()


def test_widths_validation():
    with pytest.raises(ValueError, match="5 entries"):
        NetworkWidths(encoder_channels=(8, 16, 16, 16))
    assert NetworkWidths.from_dict(SMALL.to_dict()) == SMALL
