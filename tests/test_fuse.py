"""pfafn.fuse: BatchNorm folding keeps the eval-mode outputs (fp32 tolerance) and leaves the saved model alone."""
from __future__ import annotations

import pytest
import torch

from pfafn.fuse import fold_batchnorm
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
