"""pfafn.inference: precision modes stay close to fp32, flows stay fp32, the tiled API matches."""

from __future__ import annotations


import pytest
import torch

from pfafn.inference import InferenceMode, TryOnPredictor
from pfafn.nn.correlation import local_correlation
from tests.model_helpers import small_tryon_model



def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR for images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.double() - b.double()).square().mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def _model():
    return small_tryon_model()


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(2, 3, 128, 96, generator=g) * 2 - 1, torch.rand(2, 3, 128, 96, generator=g) * 2 - 1,
            torch.rand(2, 1, 128, 96, generator=g))


@pytest.fixture(scope="module")
def reference(pair):
    with torch.no_grad():
        return _model()(*pair)


def test_mode_parsing_and_validation():
    assert InferenceMode.parse("bf16+channels_last") == InferenceMode("bf16", channels_last=True)
    assert InferenceMode.parse("fp16+cl+compile") == InferenceMode("fp16", True, True)
    assert str(InferenceMode("bf16", channels_last=True)) == "bf16+channels_last"
    assert InferenceMode.parse(str(InferenceMode("fp16", compile=True))) == InferenceMode("fp16", compile=True)
    with pytest.raises(ValueError, match="dtype"):
        InferenceMode("int8")
    with pytest.raises(ValueError, match="unknown"):
        InferenceMode.parse("bf16+fast")


def test_fp32_channels_last_matches_reference(pair, reference):
    out = TryOnPredictor(_model(), InferenceMode("fp32", channels_last=True))(*pair)
    torch.testing.assert_close(out.tryon, reference.tryon, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.flow, reference.flow, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec, min_psnr", [("bf16+channels_last", 45.0), ("bf16", 45.0), ("bf16+nofold", 45.0),
                                            ("fp16", 60.0)])
def test_reduced_precision_close_to_fp32(pair, reference, spec, min_psnr):
    predictor = TryOnPredictor(_model(), InferenceMode.parse(spec))
    out = predictor(*pair)
    for name in ("tryon", "warped_garment", "warped_mask", "flow", "rendered", "composite_mask"):
        t = getattr(out, name)
        assert t.dtype == torch.float32 and t.is_contiguous(), name
    assert _psnr(out.tryon, reference.tryon) >= min_psnr
    # flows are coordinates kept in fp32: far closer than bf16's 3 significant digits would allow on their own
    assert (out.flow - reference.flow).abs().max() < 5e-3


def test_predictor_tiled_api_matches_call(pair):
    predictor = TryOnPredictor(_model(), InferenceMode("bf16", channels_last=True))
    person, garment, mask = pair
    direct = predictor(person, garment, mask)
    masked, binary = predictor.prepare_garment(garment, mask)
    g_pyr = predictor.encode_garment(masked)
    p_pyr = predictor.encode_person(person)
    assert g_pyr[0].dtype == torch.bfloat16  # cached encodings take half the memory
    tiled = predictor.from_features(person, p_pyr, masked, binary, g_pyr)
    torch.testing.assert_close(tiled.tryon, direct.tryon, rtol=0, atol=1e-5)
    assert not torch.is_grad_enabled() or not tiled.tryon.requires_grad


def test_compile_flag_compiles_children_in_place():
    model = _model()
    keys = list(model.state_dict())
    TryOnPredictor(model, InferenceMode("fp32", compile=True))
    assert list(model.state_dict()) == keys  # published keys unchanged (no _orig_mod. prefix)
    for child in (model.warp.image_features, model.warp.cond_FPN, model.warp.aflow_net, model.gen):
        assert child._compiled_call_impl is not None


@pytest.mark.slow
def test_compiled_predictor_matches_reference():
    model = _model()
    g = torch.Generator().manual_seed(2)
    pair = (torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, torch.rand(1, 3, 64, 64, generator=g) * 2 - 1,
            torch.rand(1, 1, 64, 64, generator=g))
    with torch.no_grad():
        ref = model(*pair)
    out = TryOnPredictor(model, InferenceMode("fp32", compile=True))(*pair)
    torch.testing.assert_close(out.tryon, ref.tryon, rtol=1e-4, atol=1e-4)


def test_prepare_and_autocast_drive_the_model_directly(pair):
    """The path pfafn.tiling takes: mode.prepare + inference_mode + mode.autocast, equal to the predictor."""
    mode = InferenceMode("bf16", channels_last=True)
    model = mode.prepare(_model().train())
    assert not model.training
    assert model.gen.model.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), mode.autocast("cpu"):
        out = model(*pair)
    assert out.flow.dtype == torch.float32 and out.tryon.dtype == torch.float32
    ref = TryOnPredictor(_model(), mode)(*pair)
    torch.testing.assert_close(out.tryon, ref.tryon, rtol=0, atol=1e-5)


@pytest.mark.parametrize("block", [24, 4])  # the default; tiny blocks: several per row, rows rounded up to blocks
@pytest.mark.parametrize("shape", [(2, 16, 8, 6), (3, 40, 5, 3), (1, 256, 4, 9), (1, 8, 5, 43), (2, 8, 3, 96)])
def test_bf16_correlation_gemm_matches_the_formula(shape, block, monkeypatch):
    """The bf16 GEMM cost volume = the exact formula on the bf16-rounded inputs, up to the bf16 output rounding."""
    monkeypatch.setattr("pfafn.nn.correlation._GEMM_BLOCK", block)
    g = torch.Generator().manual_seed(4)
    first, second = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    exact = local_correlation(first.bfloat16().double(), second.bfloat16().double())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = local_correlation(first, second.bfloat16().contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16 and out.shape == exact.shape
    assert out.is_contiguous(memory_format=torch.channels_last)  # follows the features' layout: no conversion
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert local_correlation(first, second).is_contiguous()  # NCHW features: an NCHW volume
    torch.testing.assert_close(out.double(), exact, rtol=2**-8, atol=2**-8 * exact.abs().max().item())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autograd on (training): the fp32 loop, fp32 result
        assert local_correlation(first, second).dtype == torch.float32
    with torch.inference_mode():  # no autocast: the published fp32 arithmetic
        exact_fp32 = local_correlation(first.double(), second.double()).float()
        torch.testing.assert_close(local_correlation(first, second), exact_fp32)


def test_bf16_fast_path_psnr_vs_fp32_on_the_tiled_path(pair, reference):
    """What the catalog runs (fold + bf16 GEMM correlation + channels_last, through pfafn.tiling) stays >= 40 dB
    from the fp32 model on the same inputs, and its flows within 5e-3."""
    from pfafn.tiling import encode_tile, tryon_pairs

    mode = InferenceMode.parse("bf16+channels_last")
    model = mode.prepare(_model())
    person, garment, mask = pair
    with mode.autocast("cpu"):
        tile = encode_tile(model, person, garment, mask)
        (_, out), = list(tryon_pairs(model, tile, [0, 1], [0, 1], batch_size=2))
    assert _psnr(out.tryon.float(), reference.tryon) >= 40.0
    assert (out.flow - reference.flow).abs().max() < 5e-3
