"""pfafn.fuse: BatchNorm folding keeps the eval-mode outputs (fp32 tolerance) and leaves the saved model alone."""
from __future__ import annotations

import pytest
import torch

from pfafn.fuse import cast_conv_weights, fold_batchnorm
from pfafn.inference import InferenceMode
from pfafn.tutor import TutorModel
from tests.model_helpers import SMALL, randomize_bn, single_thread, small_tryon_model  # noqa: F401


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(3)
    return (torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, torch.rand(2, 3, 64, 64, generator=g) * 2 - 1,
            torch.rand(2, 1, 64, 64, generator=g))


def _count_bn(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_fold_matches_unfolded_model_in_fp32(pair, single_thread):  # noqa: F811
    model = small_tryon_model()
    with torch.no_grad():
        ref = model(*pair)
    before = _count_bn(model)
    folded = fold_batchnorm(model)
    assert folded == 63 and _count_bn(model) == before - folded == 30  # 93 BatchNorms in the student
    # AFWM keeps, per encoder and level, the DownSample BN and the leading BN of its 2 pre-activation ResBlocks (fed
    # by a sum, followed by ReLU → conv): nothing to fold them into. Every generator BN directly follows a conv.
    assert _count_bn(model.warp) == 2 * 5 * 3 and _count_bn(model.gen) == 0
    assert fold_batchnorm(model) == 0  # idempotent
    with torch.no_grad():
        out = model(*pair)
    for name in ("tryon", "flow", "rendered", "composite_mask", "warped_garment"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-4, atol=1e-4, msg=name)


def test_fold_refuses_training_mode():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(small_tryon_model().train())


def test_prepare_folds_reduced_precision_only():
    torch.manual_seed(0)
    tutor = randomize_bn(TutorModel(SMALL)).eval()
    keys = list(tutor.state_dict())
    InferenceMode("fp32", channels_last=True).prepare(tutor)
    assert list(tutor.state_dict()) == keys and _count_bn(tutor) > 0  # fp32: the published arithmetic, untouched
    model = small_tryon_model()
    weight = model.gen.model.model[2].block[0].weight
    prepared = InferenceMode.parse("bf16+channels_last").prepare(model)
    assert _count_bn(prepared.gen) == 0 and _count_bn(prepared.warp) == 30
    folded = prepared.gen.model.model[2].block[0]
    assert folded.bias is not None and folded.weight.is_contiguous(memory_format=torch.channels_last)
    assert folded.weight is not weight  # new tensors: a model object saved elsewhere is not written through


def test_fold_flag_parsing_round_trips():
    assert InferenceMode("bf16").fold_bn and not InferenceMode("fp32").fold_bn
    assert InferenceMode.parse("fp32+fold").fold_bn and not InferenceMode.parse("bf16+nofold").fold_bn
    for spec in ("bf16", "bf16+nofold", "fp32+fold", "fp16+channels_last+compile"):
        assert InferenceMode.parse(str(InferenceMode.parse(spec))) == InferenceMode.parse(spec)
    assert str(InferenceMode("bf16", channels_last=True)) == "bf16+channels_last"


def test_reduced_precision_stores_conv_weights_once_with_the_same_arithmetic(pair):
    """bf16 prepare stores conv weights in bf16 (autocast no longer recasts them per call), except the flow heads'
    offset convs, which run in fp32; outputs equal those of the same model with fp32 weights under autocast."""
    mode = InferenceMode.parse("bf16+channels_last")
    model = mode.prepare(small_tryon_model())
    offset = {id(c) for c in model.warp.aflow_net.offset_convs()}
    convs = [m for m in model.modules() if type(m) is torch.nn.Conv2d]
    assert len(offset) == 10 and all(c.weight.dtype == torch.float32 for c in convs if id(c) in offset)
    assert all(c.weight.dtype == torch.bfloat16 and (c.bias is None or c.bias.dtype == torch.bfloat16)
               for c in convs if id(c) not in offset)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs if c.kernel_size != (1, 1))
    assert cast_conv_weights(model, torch.bfloat16) == len(convs) - 10  # idempotent: already bf16
    widened = mode.prepare(small_tryon_model())  # folded + channels_last, weights back in fp32 (same values)
    for c in widened.modules():
        if type(c) is torch.nn.Conv2d:
            for p in (c.weight, c.bias):
                if p is not None:
                    p.data = p.data.float()
    person, garment, mask = (mode.input(t) for t in pair)
    with torch.inference_mode(), mode.autocast("cpu"):
        out, ref = model(person, garment, mask), widened(person, garment, mask)
    assert torch.equal(out.tryon, ref.tryon) and torch.equal(out.flow, ref.flow)
