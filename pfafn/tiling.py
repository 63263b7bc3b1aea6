"""Tiled try-on: encode each garment and each person once per tile, then run flow + generator per pair.

A catalog of G garments × M models needs G·M try-ons, but the garment encoder+FPN depends only on the garment and
the person encoder+FPN only on the person: together they are about half the published model's FLOPs (see
docs/model-speed.md). ``tryon_tile`` encodes the tile's garments and persons once and then runs the cascaded flow
estimation and the generator for the requested pairs in batches, gathering the cached pyramids per pair. BatchNorm
runs in eval mode, so the result equals the per-pair published pipeline (a test pins it to 1e-5 in fp32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from pfafn.nn.flow import memory_format_of
from pfafn.tryon import TryOnModel, TryOnOutput


@dataclass
class EncodedTile:
    """Cached encodings of one tile (all tensors on the model's device)."""

    persons: torch.Tensor  # M×3×H×W in [-1, 1]
    person_pyramid: tuple[torch.Tensor, ...]  # 5 levels, fine→coarse, M×C×h×w
    garments: torch.Tensor  # G×3×H×W, already multiplied by the binarized mask
    garment_masks: torch.Tensor  # G×1×H×W, binary
    garment_pyramid: tuple[torch.Tensor, ...]


def _encode_in_chunks(encoder, images: torch.Tensor, chunk: int) -> tuple[torch.Tensor, ...]:
    levels: list[list[torch.Tensor]] | None = None
    for start in range(0, images.shape[0], chunk):
        pyramid = encoder(images[start : start + chunk])
        if levels is None:
            levels = [[] for _ in pyramid]
        for level, feature in zip(levels, pyramid):
            level.append(feature)
    assert levels is not None, "empty tile"
    return tuple(torch.cat(level) if len(level) > 1 else level[0] for level in levels)


@torch.inference_mode()
def encode_tile(
    model: TryOnModel,
    persons: torch.Tensor,
    garments: torch.Tensor,
    garment_masks: torch.Tensor,
    *,
    chunk: int = 16,
) -> EncodedTile:
    """Encode a tile's persons (M×3×H×W) and garments (G×3×H×W, masks G×1×H×W in [0, 1]) once."""
    masked, binary = model.prepare_garment(garments, garment_masks)
    return EncodedTile(
        persons=persons,
        person_pyramid=_encode_in_chunks(model.warp.encode_person, persons, chunk),
        garments=masked,
        garment_masks=binary,
        garment_pyramid=_encode_in_chunks(model.warp.encode_garment, masked, chunk),
    )


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t.index_select(0, index)`` in ``t``'s memory format: index_select allocates NCHW, so a channels_last
    pyramid would be gathered into NCHW and converted back by the next convolution (two copies instead of one)."""
    if memory_format_of(t) == torch.channels_last:
        return t.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
    return t.index_select(0, index)


@torch.inference_mode()
def tryon_pairs(
    model: TryOnModel,
    tile: EncodedTile,
    garment_index: Sequence[int] | torch.Tensor,
    person_index: Sequence[int] | torch.Tensor,
    *,
    batch_size: int = 16,
) -> Iterator[tuple[slice, TryOnOutput]]:
    """Yield ``(slice into the pair lists, TryOnOutput for those pairs)`` batch by batch."""
    device = tile.persons.device
    g_idx = torch.as_tensor(garment_index, dtype=torch.long, device=device)
    p_idx = torch.as_tensor(person_index, dtype=torch.long, device=device)
    if g_idx.shape != p_idx.shape:
        raise ValueError(f"garment_index and person_index differ in length: {g_idx.shape} vs {p_idx.shape}")
    for start in range(0, g_idx.numel(), batch_size):
        g = g_idx[start : start + batch_size]
        p = p_idx[start : start + batch_size]
        out = model.from_features(
            _gather(tile.persons, p),
            tuple(_gather(level, p) for level in tile.person_pyramid),
            _gather(tile.garments, g),
            _gather(tile.garment_masks, g),
            tuple(_gather(level, g) for level in tile.garment_pyramid),
        )
        yield slice(start, start + g.numel()), out
