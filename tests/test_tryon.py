"""pfafn.tryon: the published test pipeline, composition, tiled reuse, input checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pfafn.nn import NetworkWidths
from pfafn.tryon import TryOnModel, TryOnOutput, compose_tryon
from tests.model_helpers import small_tryon_model



@pytest.fixture(scope="module")
def model():
    return small_tryon_model()


def _pair(b=2, h=128, w=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    person = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    garment = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    mask = torch.rand(b, 1, h, w, generator=g)
    return person, garment, mask


def test_compose_tryon_formula():
    g = torch.Generator().manual_seed(2)
    gen_out = torch.randn(2, 4, 8, 6, generator=g) * 3
    warped = torch.rand(2, 3, 8, 6, generator=g) * 2 - 1
    warped_mask = torch.rand(2, 1, 8, 6, generator=g)
    tryon, rendered, m = compose_tryon(gen_out, warped, warped_mask)
    torch.testing.assert_close(rendered, torch.tanh(gen_out[:, :3]))
    torch.testing.assert_close(m, torch.sigmoid(gen_out[:, 3:4]) * warped_mask)
    torch.testing.assert_close(tryon, warped * m + rendered * (1 - m))
    _, _, m0 = compose_tryon(gen_out, warped, torch.zeros_like(warped_mask))
    assert torch.all(m0 == 0)


def test_forward_is_the_published_test_pipeline(model):
    person, garment, mask = _pair()
    with torch.no_grad():
        out = model(person, garment, mask)
        # PF-AFN_test/test.py, step by step, with torch.nn.functional only
        edge = (mask > 0.5).float()
        clothes = garment * edge
        warped = model.warp(person, clothes)
        grid = warped.flow.permute(0, 2, 3, 1)
        warped_cloth = F.grid_sample(clothes, grid, mode="bilinear", padding_mode="border", align_corners=True)
        warped_edge = F.grid_sample(edge, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        gen_out = model.gen(torch.cat([person, warped_cloth, warped_edge], 1))
        rendered = torch.tanh(gen_out[:, :3])
        m = torch.sigmoid(gen_out[:, 3:4]) * warped_edge
        tryon = warped_cloth * m + rendered * (1 - m)
    assert isinstance(out, TryOnOutput)
    torch.testing.assert_close(out.warped_garment, warped_cloth)
    torch.testing.assert_close(out.warped_mask, warped_edge)
    torch.testing.assert_close(out.flow, warped.flow)
    torch.testing.assert_close(out.rendered, rendered)
    torch.testing.assert_close(out.composite_mask, m)
    torch.testing.assert_close(out.tryon, tryon)
    assert out.tryon.shape == (2, 3, 128, 96) and out.tryon.abs().max() <= 1
    assert out.composite_mask.min() >= 0 and out.composite_mask.max() <= 1
    assert torch.all(out.composite_mask[out.warped_mask == 0] == 0)


def test_mask_is_binarized_at_half(model):
    person, garment, mask = _pair(b=1, h=64, w=64)
    soft = torch.where(mask > 0.5, 0.51 + 0.4 * mask, 0.49 * mask)  # same side of 0.5, different values
    with torch.no_grad():
        a, b = model(person, garment, mask), model(person, garment, soft)
        c = model(person, garment, torch.ones_like(mask))
    torch.testing.assert_close(a.tryon, b.tryon, rtol=0, atol=0)
    assert not torch.allclose(a.tryon, c.tryon)


def test_tiled_features_equal_forward(model):
    person, garment, mask = _pair(b=3, h=64, w=96)
    with torch.no_grad():
        ref = model(person, garment, mask)
        masked, binary = model.prepare_garment(garment, mask)
        tiled = model.from_features(
            person, model.warp.encode_person(person), masked, binary, model.warp.encode_garment(masked)
        )
        for name in ("tryon", "warped_garment", "warped_mask", "flow", "rendered", "composite_mask"):
            torch.testing.assert_close(getattr(tiled, name), getattr(ref, name), rtol=1e-5, atol=1e-5)
        # one garment encoded once, expanded over three persons == three forward passes with that garment
        g_pyr = tuple(t.expand(3, -1, -1, -1) for t in model.warp.encode_garment(masked[:1]))
        one = model.from_features(
            person, model.warp.encode_person(person), masked[:1].expand(3, -1, -1, -1),
            binary[:1].expand(3, -1, -1, -1), g_pyr,
        )
        ref_one = model(person, garment[:1].expand(3, -1, -1, -1), mask[:1].expand(3, -1, -1, -1))
    torch.testing.assert_close(one.tryon, ref_one.tryon, rtol=1e-5, atol=1e-5)


def test_512x384_forward_at_reduced_widths():
    tiny = NetworkWidths(encoder_channels=(4, 8, 8, 8, 8), fpn_dim=8, flow_channels=(8, 8, 8), ngf=4)
    m = TryOnModel(tiny).eval()
    person, garment, mask = _pair(b=1, h=512, w=384)
    with torch.no_grad():
        out = m(person, garment, mask)
    assert out.tryon.shape == (1, 3, 512, 384) and out.flow.shape == (1, 2, 512, 384)
    assert torch.isfinite(out.tryon).all()


def test_input_checks(model):
    person, garment, mask = _pair(b=1, h=64, w=64)
    with pytest.raises(ValueError, match="250×190"):
        model(*_pair(b=1, h=250, w=190))
    with pytest.raises(ValueError, match="garment_mask must be B×1×H×W"):
        model(person, garment, mask.expand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="same H×W"):
        model(person, garment[..., :32], mask)


def test_import_pfafn_does_not_import_ray():
    code = "import sys, pfafn, pfafn.nn, pfafn.tryon, pfafn.checkpoint, pfafn.inference; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
