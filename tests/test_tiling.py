"""Tiled try-on (encoders once per tile) must equal the published per-pair pipeline."""
import torch

from pfafn.nn.afwm import NetworkWidths
from pfafn.tiling import encode_tile, tryon_pairs
from pfafn.tryon import TryOnModel

TINY = NetworkWidths(encoder_channels=(8, 16, 32, 32, 32), fpn_dim=16, flow_channels=(16, 8, 8), ngf=8)


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


import pytest


@pytest.mark.parametrize(
    "chunk,batch_size,tol",
    [
        # Same tensor shapes as the per-pair pipeline: only the reuse of encodings differs.
        (1, 1, 1e-5),
        # Batched encoders / pairs: oneDNN picks other blockings for other batch sizes, so fp32 sums round
        # differently (measured ~1e-5 on this random tiny model); the result is still the same function.
        (2, 5, 1e-4),
    ],
)
def test_tiled_equals_per_pair_fp32(chunk, batch_size, tol):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = TryOnModel(TINY).eval()
    _randomize_bn(model, 1)
    h, w = 64, 64
    persons = torch.rand(3, 3, h, w) * 2 - 1
    garments = torch.rand(4, 3, h, w) * 2 - 1
    masks = (torch.rand(4, 1, h, w) > 0.3).float()
    pairs = [(g, p) for g in range(4) for p in range(3)]
    g_idx = [g for g, _ in pairs]
    p_idx = [p for _, p in pairs]

    tile = encode_tile(model, persons, garments, masks, chunk=chunk)
    tiled = torch.zeros(len(pairs), 3, h, w)
    flows = torch.zeros(len(pairs), 2, h, w)
    for sl, out in tryon_pairs(model, tile, g_idx, p_idx, batch_size=batch_size):
        tiled[sl] = out.tryon
        flows[sl] = out.flow

    with torch.inference_mode():
        for k, (g, p) in enumerate(pairs):
            ref = model(persons[p : p + 1], garments[g : g + 1], masks[g : g + 1])
            assert (tiled[k] - ref.tryon[0]).abs().max().item() <= tol, f"pair {k} differs"
            assert (flows[k] - ref.flow[0]).abs().max().item() <= tol


def test_tryon_pairs_rejects_mismatched_indices():
    model = TryOnModel(TINY).eval()
    x = torch.zeros(1, 3, 64, 64)
    tile = encode_tile(model, x, x, torch.ones(1, 1, 64, 64))
    try:
        next(tryon_pairs(model, tile, [0, 0], [0]))
    except ValueError as exc:
        assert "differ in length" in str(exc)
    else:
        raise AssertionError("mismatched index lists were accepted")
