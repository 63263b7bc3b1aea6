"""pfafn.losses: hand-computable cases for every term of the original training scripts (docs/method.md)."""
from __future__ import annotations

import math
import urllib.error
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from pfafn import losses as L
from tests.model_helpers import single_thread  # noqa: F401  (fixture)


@pytest.fixture(autouse=True, scope="module")
def _single_thread(single_thread):
    """These tensors are tiny (see tests.model_helpers.single_thread)."""

EPS = 1e-3
RHO0 = (EPS * EPS) ** 0.45  # ρ(0), the Charbonnier minimum


def rho(d: float) -> float:
    return (d * d + EPS * EPS) ** 0.45


@dataclass
class FakeWarp:
    """Duck-typed stand-in for pfafn.nn.afwm.WarpOutput (only the fields the losses read)."""

    warped_garments: list
    warped_masks: list | None
    flows: list
    offsets: list
    person_features: list | None = None


LEVEL_SIZES = [(4, 3), (8, 6), (16, 12), (32, 24), (64, 48)]  # coarse→fine pyramid of a 64×48 image


def identity_grid(b: int, h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    ys = torch.linspace(-1.0, 1.0, h, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy]).expand(b, 2, h, w).clone()


def pixel_coords(h: int, w: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    v, u = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    return u, v  # u = column (x), v = row (y)


# --------------------------------------------------------------------------------------------------------------------
# second-order smoothness and TV
# --------------------------------------------------------------------------------------------------------------------

def test_smoothness_of_affine_flow_is_the_charbonnier_minimum():
    u, v = pixel_coords(9, 7)
    flow = torch.stack([0.3 * u - 0.2 * v + 0.1, -0.05 * u + 0.4 * v - 1.0]).unsqueeze(0).repeat(2, 1, 1, 1)
    assert L.second_order_smoothness(flow).item() == pytest.approx(2 * RHO0, rel=1e-9)
    # float32 identity grid: rounding in linspace must not matter
    assert L.second_order_smoothness(identity_grid(3, 16, 12)).item() == pytest.approx(2 * RHO0, rel=1e-4)


def test_smoothness_of_curved_flow_is_hand_computed():
    a = 0.01
    u, v = pixel_coords(8, 10)
    flow = torch.stack([a * u * u, 0.5 * v]).unsqueeze(0)  # x channel curved along columns, y channel affine
    dx, dy = L.second_order_differences(flow)
    assert dx.shape == (1, 4, 6, 8)
    # horizontal, vertical, diagonal, anti-diagonal responses of a·u²: 2a, 0, 2a, 2a
    torch.testing.assert_close(dx[0, :, 0, 0], torch.tensor([2 * a, 0.0, 2 * a, 2 * a], dtype=torch.float64))
    assert dy.abs().max().item() < 1e-12
    expected = (3 * rho(2 * a) + rho(0.0)) / 4 + rho(0.0)
    got = L.second_order_smoothness(flow).item()
    assert got == pytest.approx(expected, rel=1e-9)
    assert got > 2 * RHO0 * 1.5


def test_smoothness_filters_are_valid_convolutions_and_differentiable():
    flow = identity_grid(2, 5, 4).requires_grad_(True)
    dx, dy = L.second_order_differences(flow)
    assert dx.shape == dy.shape == (2, 4, 3, 2)
    L.second_order_smoothness(flow).backward()
    assert torch.isfinite(flow.grad).all()
    # too small for a 3×3 valid convolution: contributes nothing
    assert L.second_order_smoothness(torch.zeros(1, 2, 2, 2)).item() == 0.0


def test_total_variation():
    assert L.total_variation(torch.full((2, 2, 5, 6), 3.7)).item() == 0.0
    u, v = pixel_coords(5, 6, dtype=torch.float32)
    ramp_w = (0.5 * u).expand(2, 2, 5, 6)
    assert L.total_variation(ramp_w).item() == pytest.approx(0.5, rel=1e-6)
    ramp_both = (-0.25 * v + 0.75 * u).expand(1, 2, 5, 6)
    assert L.total_variation(ramp_both).item() == pytest.approx(1.0, rel=1e-6)
    assert L.total_variation((2.0 * u[:1]).expand(1, 2, 1, 6)).item() == pytest.approx(2.0)  # single row


# --------------------------------------------------------------------------------------------------------------------
# warp loss
# --------------------------------------------------------------------------------------------------------------------

TARGET_RGB = torch.tensor([0.1, -0.2, 0.3])


def perfect_warp(b: int = 2) -> tuple[FakeWarp, torch.Tensor, torch.Tensor]:
    """Every level exact (constant target → exact bilinear downscale), affine flows, constant offsets."""
    target = TARGET_RGB.view(1, 3, 1, 1).expand(b, 3, 64, 48).clone()
    mask = torch.ones(b, 1, 64, 48)
    garments = [TARGET_RGB.view(1, 3, 1, 1).expand(b, 3, h, w).clone() for h, w in LEVEL_SIZES]
    masks = [torch.ones(b, 1, h, w) for h, w in LEVEL_SIZES]
    flows = [identity_grid(b, h, w) for h, w in LEVEL_SIZES]
    offsets = [torch.full((b, 2, h // 2, w // 2), 0.3) for h, w in LEVEL_SIZES for _ in range(2)]
    return FakeWarp(garments, masks, flows, offsets), target, mask


SMOOTH_BASELINE = sum((i + 1) * 6.0 * 2 * RHO0 for i in range(5))


def test_warp_loss_of_perfect_warp_is_only_the_smoothness_floor():
    out, target, mask = perfect_warp()
    loss, parts = L.warp_loss(out, target, mask)
    assert set(parts) == {"l1", "vgg", "mask", "smooth", "tv", "total"}
    assert parts["l1"].item() == pytest.approx(0.0, abs=1e-7)
    assert parts["mask"].item() == 0.0 and parts["tv"].item() == 0.0 and parts["vgg"].item() == 0.0
    assert loss.item() == pytest.approx(SMOOTH_BASELINE, rel=1e-4)
    assert parts["total"].item() == pytest.approx(loss.item())
    assert not parts["total"].requires_grad


@pytest.mark.parametrize("level", [0, 2, 4])
def test_warp_loss_level_weights(level):
    out, target, mask = perfect_warp()
    out.warped_garments[level] = out.warped_garments[level] + 0.5  # only this level's garment is wrong
    out.warped_masks[level] = out.warped_masks[level] - 0.25  # … and its mask
    loss, parts = L.warp_loss(out, target, mask)
    assert parts["l1"].item() == pytest.approx((level + 1) * 0.5, rel=1e-5)
    assert parts["mask"].item() == pytest.approx((level + 1) * 2.0 * 0.25, rel=1e-5)
    assert loss.item() == pytest.approx(SMOOTH_BASELINE + (level + 1) * (0.5 + 0.5), rel=1e-5)


@pytest.mark.parametrize("level", [1, 3])
def test_warp_loss_smoothness_and_tv_weights(level):
    out, target, mask = perfect_warp(b=1)
    h, w = LEVEL_SIZES[level]
    a = 0.01
    u, _ = pixel_coords(h, w, dtype=torch.float32)
    out.flows[level] = out.flows[level].clone()
    out.flows[level][:, 0] = a * u * u  # curved x channel at one level
    curved = (3 * rho(2 * a) + rho(0.0)) / 4 + rho(0.0)
    oh, ow = out.offsets[7].shape[-2:]
    uo, _ = pixel_coords(oh, ow, dtype=torch.float32)
    out.offsets[7] = (1.5 * uo).expand(1, 2, oh, ow).clone()  # TV 1.5 on one of the ten offsets
    _, parts = L.warp_loss(out, target, mask)
    expected_smooth = SMOOTH_BASELINE + (level + 1) * 6.0 * (curved - 2 * RHO0)
    assert parts["smooth"].item() == pytest.approx(expected_smooth, rel=1e-4)
    assert parts["tv"].item() == pytest.approx(0.01 * 1.5, rel=1e-5)
    _, parts = L.warp_loss(out, target, mask, smooth_weight=0.0, tv_weight=0.0)
    assert parts["smooth"].item() == 0.0 and parts["tv"].item() == 0.0


def test_warp_loss_targets_are_bilinearly_downscaled_like_the_reference():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 64, 48) * 2 - 1
    mask = (torch.rand(2, 1, 64, 48) > 0.5).float()
    out, _, _ = perfect_warp()
    # the reference: F.interpolate(x, scale_factor=0.5 ** (4 - i), mode="bilinear") (align_corners=False)
    out.warped_garments = [F.interpolate(target, scale_factor=0.5 ** (4 - i), mode="bilinear") for i in range(5)]
    out.warped_masks = [F.interpolate(mask, scale_factor=0.5 ** (4 - i), mode="bilinear") for i in range(5)]
    _, parts = L.warp_loss(out, target, mask)
    assert parts["l1"].item() < 1e-6 and parts["mask"].item() < 1e-6


def test_warp_loss_vgg_term_and_gradients(vgg):
    out, target, mask = perfect_warp()
    level = 2
    out.warped_garments[level] = (out.warped_garments[level] + 0.3 * torch.randn(2, 3, 16, 12)).requires_grad_(True)
    loss, parts = L.warp_loss(out, target, mask, vgg=vgg)
    expected_vgg = 0.2 * (level + 1) * vgg(out.warped_garments[level], target[..., :16, :12]).item()
    assert parts["vgg"].item() == pytest.approx(expected_vgg, rel=1e-4)
    assert parts["vgg"].item() > 0
    loss.backward()
    assert out.warped_garments[level].grad is not None and out.warped_garments[level].grad.abs().sum() > 0


def test_warp_loss_needs_masks_when_mask_term_is_on():
    out, target, mask = perfect_warp()
    out.warped_masks = None
    with pytest.raises(ValueError, match="garment_mask"):
        L.warp_loss(out, target, mask)
    _, parts = L.warp_loss(out, target, mask, mask_weight=0.0)
    assert parts["mask"].item() == 0.0
    with pytest.raises(TypeError, match="intermediates"):
        L.warp_loss(object(), target, mask)
    out.flows = None  # a WarpOutput computed without intermediates
    with pytest.raises(TypeError, match="intermediates"):
        L.warp_loss(out, target, mask, mask_weight=0.0)


# --------------------------------------------------------------------------------------------------------------------
# adjustable knowledge distillation
# --------------------------------------------------------------------------------------------------------------------

def test_distillation_gate():
    target = torch.zeros(3, 3, 8, 6)
    tutor = torch.stack([torch.full((3, 8, 6), 0.1), torch.full((3, 8, 6), 0.5), torch.full((3, 8, 6), -0.2)])
    student = torch.stack([torch.full((3, 8, 6), -0.3), torch.full((3, 8, 6), 0.2), torch.full((3, 8, 6), 0.2)])
    student.requires_grad_(True)
    gate = L.distillation_gate(tutor, student, target)
    # tutor better / worse / equal (strict comparison)
    assert gate.tolist() == [1.0, 0.0, 0.0]
    assert gate.dtype == torch.float32 and not gate.requires_grad


def make_kd_outputs(channels: int, b: int = 2):
    feats_t = [torch.zeros(b, channels, h, w, requires_grad=True) for h, w in LEVEL_SIZES]
    feats_s = [torch.zeros(b, channels, h, w) for h, w in LEVEL_SIZES]
    flows_t = [identity_grid(b, h, w).requires_grad_(True) for h, w in LEVEL_SIZES]
    flows_s = [identity_grid(b, h, w) for h, w in LEVEL_SIZES]
    for i, f in enumerate(feats_s):
        f[0] = float(i + 1)  # sample 0: squared difference (i+1)² everywhere at level i
        f[1] = torch.randn_like(f[1])  # sample 1: arbitrary
    for i, f in enumerate(flows_s):
        f[0, 0] += 3.0 * (i + 1)  # sample 0: (3, 4)·(i+1) displacement → norm 5·(i+1) at every pixel
        f[0, 1] += 4.0 * (i + 1)
        f[1] += torch.randn_like(f[1])
    feats_s = [f.requires_grad_(True) for f in feats_s]
    flows_s = [f.requires_grad_(True) for f in flows_s]
    tutor = FakeWarp([], None, flows_t, [], person_features=feats_t)
    student = FakeWarp([], None, flows_s, [], person_features=feats_s)
    return tutor, student


FEAT_EXPECTED = 0.20 * 1 + 0.16 * 4 + 0.12 * 9 + 0.08 * 16 + 0.04 * 25  # = 4.2
FLOW_EXPECTED = 3 * 15.0 + 4 * 20.0 + 5 * 25.0  # = 250


@pytest.mark.parametrize("channels", [2, 5])
def test_distillation_loss_hand_computed(channels):
    tutor, student = make_kd_outputs(channels)
    feat, flow = L.distillation_loss(tutor, student, torch.tensor([1.0, 0.0]))
    # level i: (5−i)·0.04 · C·h·w·(i+1)² / (C·h·w·1)
    assert feat.item() == pytest.approx(FEAT_EXPECTED, rel=1e-6)
    # levels 2, 3, 4: (i+1) · h·w·5(i+1) / (h·w·1)
    assert flow.item() == pytest.approx(FLOW_EXPECTED, rel=1e-6)
    (feat + flow).backward()
    assert all(f.grad is None for f in tutor.person_features + tutor.flows)  # tutor detached
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in student.person_features)
    assert all(torch.isfinite(f.grad).all() for f in student.flows[2:])
    assert all(f.grad is None or f.grad.abs().sum() == 0 for f in student.flows[:2])  # levels 0, 1 not distilled


def test_distillation_loss_normalizes_by_gated_count_and_is_zero_without_gates():
    tutor, student = make_kd_outputs(3)
    for f in student.person_features + student.flows:
        f.data[1] = 0.0
    for f in student.flows:
        f.data[1] = identity_grid(1, *f.shape[-2:])[0]  # sample 1 equals the tutor
    feat, flow = L.distillation_loss(tutor, student, torch.tensor([1.0, 1.0]))
    assert feat.item() == pytest.approx(FEAT_EXPECTED / 2, rel=1e-6)
    assert flow.item() == pytest.approx(FLOW_EXPECTED / 2, rel=1e-6)
    (feat + flow).backward()  # zero differences in sample 1: gradients stay finite (no NaN from the norm)
    assert all(torch.isfinite(f.grad).all() for f in student.flows[2:])
    feat, flow = L.distillation_loss(tutor, student, torch.zeros(2))
    assert feat.item() == 0.0 and flow.item() == 0.0


# --------------------------------------------------------------------------------------------------------------------
# generator losses
# --------------------------------------------------------------------------------------------------------------------

def gen_inputs():
    b, h, w = 2, 16, 12
    p_tryon = torch.full((b, 3, h, w), 0.5, requires_grad=True)
    p_rendered = torch.full((b, 3, h, w), -0.25, requires_grad=True)
    m = torch.full((b, 1, h, w), 0.75)
    real = torch.zeros(b, 3, h, w)
    skin = torch.zeros(b, 1, h, w)
    skin[..., : w // 2] = 1.0  # half the pixels are skin
    return p_tryon, p_rendered, m, real, skin


def test_parser_based_gen_loss_hand_computed():
    p_tryon, p_rendered, m, real, _ = gen_inputs()
    loss, parts = L.parser_based_gen_loss(p_tryon, p_rendered, m, real)
    assert loss.item() == pytest.approx(5 * 0.5 + 5 * 0.25 + 0.25)
    assert parts["l1_tryon"].item() == pytest.approx(2.5) and parts["mask"].item() == pytest.approx(0.25)
    assert parts["vgg_tryon"].item() == 0.0 and parts["total"].item() == pytest.approx(loss.item())
    loss.backward()
    assert p_tryon.grad is not None and p_rendered.grad is not None


@pytest.mark.parametrize(("epoch", "switch", "a"), [(0, 50, 30), (49, 50, 30), (50, 50, 60), (120, 50, 60),
                                                      (9, 10, 30), (10, 10, 60)])
def test_parser_free_gen_loss_hand_computed_and_switch(epoch, switch, a):
    p_tryon, p_rendered, m, real, skin = gen_inputs()
    loss, parts = L.parser_free_gen_loss(p_tryon, p_rendered, m, real, skin, epoch, switch_epoch=switch)
    skin_l1 = a * 0.25 * 0.5  # |−0.25| on half of the pixels
    assert parts["l1_skin"].item() == pytest.approx(skin_l1)
    assert loss.item() == pytest.approx(4.0 + skin_l1)
    assert L.skin_loss_weights(epoch, switch) == ((30.0, 2.0) if a == 30 else (60.0, 4.0))


def test_generator_losses_with_vgg(vgg):
    torch.manual_seed(1)
    p_tryon, p_rendered, m, real, skin = gen_inputs()
    real = torch.rand_like(real) * 2 - 1
    _, pb = L.parser_based_gen_loss(p_tryon, p_rendered, m, real, vgg=vgg)
    assert pb["vgg_tryon"].item() == pytest.approx(vgg(p_tryon, real).item(), rel=1e-5)
    assert pb["vgg_rendered"].item() == pytest.approx(vgg(p_rendered, real).item(), rel=1e-5)
    _, early = L.parser_free_gen_loss(p_tryon, p_rendered, m, real, skin, 10, vgg=vgg)
    _, late = L.parser_free_gen_loss(p_tryon, p_rendered, m, real, skin, 60, vgg=vgg)
    assert early["vgg_skin"].item() > 0
    assert late["vgg_skin"].item() == pytest.approx(2 * early["vgg_skin"].item(), rel=1e-5)  # b: 2 → 4
    assert late["l1_skin"].item() == pytest.approx(2 * early["l1_skin"].item(), rel=1e-6)  # a: 30 → 60
    assert early["vgg_tryon"].item() == pytest.approx(pb["vgg_tryon"].item(), rel=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# VGG loss
# --------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg_state():
    return L.random_vgg19_features_state_dict(seed=0)


@pytest.fixture(scope="module")
def vgg(vgg_state):
    return L.VGGLoss.from_state_dict(vgg_state)


def test_vgg_loss_basics(vgg):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 12) * 2 - 1  # the 16×12 level needs ceil_mode pools
    y = torch.rand(2, 3, 16, 12) * 2 - 1
    assert vgg(x, x).item() == 0.0
    x.requires_grad_(True)
    loss = vgg(x, y)
    assert loss.item() > 0
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in vgg.parameters())
    vgg.train()
    assert not vgg.training and not any(m.training for m in vgg.modules())
    pools = [m for m in vgg.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.ceil_mode for p in pools)
    assert [f.shape[-2:] for f in vgg.extract(x)] == [(16, 12), (8, 6), (4, 3), (2, 2), (1, 1)]


def test_vgg_loss_matches_torchvision_layers(vgg, vgg_state):
    """Independent check of the slices and layer weights against torchvision's VGG19 layer stack."""
    from torchvision.models import vgg as tv_vgg

    features = tv_vgg.make_layers(tv_vgg.cfgs["E"])
    features.load_state_dict(vgg_state, strict=False)
    torch.manual_seed(2)
    x0 = torch.rand(1, 3, 32, 32) * 2 - 1  # even sizes everywhere: ceil_mode is irrelevant
    y0 = torch.rand(1, 3, 32, 32) * 2 - 1
    slices = [(0, 2), (2, 7), (7, 12), (12, 21), (21, 30)]
    expected, x, y = 0.0, x0, y0
    with torch.no_grad():
        for (start, end), weight in zip(slices, [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1]):
            x = features[start:end](x)
            y = features[start:end](y)
            expected += weight * (x - y).abs().mean().item()
        got = vgg(x0, y0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, vgg_state):
    root = tmp_path_factory.mktemp("vgg")
    features_only = root / "features_only.pth"
    torch.save(vgg_state, features_only)
    full = {f"features.{k}": v for k, v in vgg_state.items()}
    full["classifier.6.weight"] = torch.zeros(10, 4)  # extra keys of a full torchvision state dict are ignored
    full_path = root / "full.pth"
    torch.save(full, full_path)
    return features_only, full_path, full


def test_vgg_loss_from_files(vgg, weight_files):
    features_only, full_path, _ = weight_files
    torch.manual_seed(3)
    x, y = torch.rand(2, 1, 3, 16, 12) * 2 - 1
    expected = vgg(x, y).item()
    for source in (features_only, str(full_path), full_path.as_uri()):
        assert L.VGGLoss.from_source(source)(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_vgg_weights_from_the_torchvision_cache_only(monkeypatch, tmp_path, weight_files):
    _, _, full = weight_files
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    called = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: called.append(a) or full)

    with pytest.raises(L.VGGWeightsUnavailable) as info:
        L.VGGLoss.from_source("torchvision", config_key="train.vgg_weights")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert "train.vgg_weights" in message and "s3://" in message
    assert called == []  # never downloads unless allowed

    assert isinstance(L.VGGLoss.from_source("torchvision", allow_download=True), L.VGGLoss)
    assert called and called[0][0] == L.TORCHVISION_VGG19_URL

    cache = tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cache.parent.mkdir(parents=True)
    # the published file predates zip serialization: store the cache copy in the legacy format
    torch.save(full, cache, _use_new_zipfile_serialization=False)
    called.clear()
    assert isinstance(L.VGGLoss.from_source("torchvision"), L.VGGLoss)
    assert called == []


def test_vgg_download_failure_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(L.VGGWeightsUnavailable, match="downloading"):
        L.VGGLoss.from_source("torchvision", allow_download=True)


def test_vgg_weights_unavailable(tmp_path, vgg_state):
    with pytest.raises(L.VGGWeightsUnavailable, match="loss.vgg_weights"):
        L.VGGLoss.from_source(None)
    with pytest.raises(L.VGGWeightsUnavailable, match="no file"):
        L.VGGLoss.from_source(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(L.VGGWeightsUnavailable, match="could not read"):
        L.VGGLoss.from_source(tmp_path / "garbage.pth")
    bad = dict(vgg_state)
    bad["28.weight"] = torch.zeros(512, 256, 3, 3)
    with pytest.raises(L.VGGWeightsUnavailable, match="shape"):
        L.VGGLoss.from_state_dict(bad)
    with pytest.raises(L.VGGWeightsUnavailable, match="missing"):
        L.VGGLoss.from_state_dict({"conv.weight": torch.zeros(1)})
    assert issubclass(L.VGGWeightsUnavailable, RuntimeError)


def test_charbonnier_constant():
    assert L.generalized_charbonnier(torch.zeros(())).item() == pytest.approx(math.pow(1e-6, 0.45), rel=1e-6)
