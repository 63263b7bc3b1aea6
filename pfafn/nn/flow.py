"""Appearance-flow helpers: pixel offsets, normalized sampling grids, composition and warping.

Conventions (those of the original ``PF-AFN_test/models/afwm.py``), shared by every function here:

* A *flow* is a **sampling grid in normalized coordinates**, shape B×2×H×W, channel 0 = x (width), channel 1 = y,
  in the ``align_corners=True`` convention: -1 is the centre of the first pixel, +1 the centre of the last one.
  It is not an offset field.
* The flow networks predict *pixel offsets* at the current level (B×2×h×w, x first); :func:`offset_to_grid`
  converts them with ``(coord + offset) / ((size - 1) / 2) - 1``.
* Every ``grid_sample`` is bilinear with ``align_corners=True`` (the published weights were trained on PyTorch 1.1,
  whose grid_sample behaved that way).  Images, features and flows use ``padding_mode="border"``; masks use
  ``"zeros"``.  Bilinear ``F.interpolate`` of flows keeps the default ``align_corners=False``, as published.
* Flows and every ``grid_sample`` run in fp32, even inside an autocast region: autocast is disabled locally and
  the inputs are cast to fp32.  The returned tensors are fp32.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fp32_region", "offset_to_grid", "compose_flows", "warp", "upsample_flow", "identity_grid", "like",
           "memory_format_of"]


def fp32_region(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``device``'s type (a no-op when autocast is not active)."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``channels_last`` for an NHWC-strided 4-D tensor (with more than one channel), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def like(x: Tensor, ref: Tensor) -> Tensor:
    """``x`` in ``ref``'s dtype and memory format, in one copy (none when both already match).

    ``grid_sample`` returns NCHW fp32 whatever its input's layout; converting its output straight to the
    activations' bf16 NHWC avoids a second, layout-only copy by the ``torch.cat`` / convolution that follows."""
    return x.to(dtype=ref.dtype, memory_format=memory_format_of(ref))


def _pixel_coordinates(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = torch.arange(height, device=device, dtype=torch.float32).view(height, 1).expand(height, width)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, width).expand(height, width)
    return xs, ys


def offset_to_grid(offset: Tensor) -> Tensor:
    """Pixel offsets → normalized sampling grid (the published ``apply_offset``).

    Args:
        offset: B×2×h×w pixel displacements at this level, channel 0 = Δx, 1 = Δy (any float dtype).

    Returns:
        B×2×h×w fp32 grid: ``x' = (x + Δx) / ((w - 1) / 2) - 1`` and likewise for y.  Zero offsets give the
        identity grid.  Needs h, w >= 2.
    """
    if offset.dim() != 4 or offset.shape[1] != 2:
        raise ValueError(f"offset must be B×2×h×w, got {tuple(offset.shape)}")
    height, width = offset.shape[-2:]
    if height < 2 or width < 2:
        raise ValueError(f"offset_to_grid needs h, w >= 2 to normalize, got {height}×{width}")
    with fp32_region(offset.device):
        offset = offset.float()
        xs, ys = _pixel_coordinates(height, width, offset.device)
        grid_x = (xs + offset[:, 0]) / ((width - 1.0) / 2.0) - 1.0
        grid_y = (ys + offset[:, 1]) / ((height - 1.0) / 2.0) - 1.0
        return torch.stack((grid_x, grid_y), dim=1)


def identity_grid(batch: int, height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """The B×2×H×W fp32 flow that samples every pixel at its own position (x first, align_corners=True)."""
    return offset_to_grid(torch.zeros(batch, 2, height, width, device=device))


def warp(image: Tensor, flow: Tensor, padding_mode: str = "border") -> Tensor:
    """Sample ``image`` at ``flow``: ``grid_sample(image, flow, bilinear, padding_mode, align_corners=True)``.

    Args:
        image: B×C×H_in×W_in image, feature, mask or flow (any float dtype).
        flow: B×2×H×W normalized sampling grid, x first.
        padding_mode: ``"border"`` for images, features and flows; ``"zeros"`` for masks.

    Returns:
        B×C×H×W, fp32.
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be B×2×H×W, got {tuple(flow.shape)}")
    with fp32_region(image.device):
        grid = flow.float().permute(0, 2, 3, 1)
        return F.grid_sample(image.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def compose_flows(previous: Tensor, new: Tensor) -> Tensor:
    """Compose two flows: the old grid sampled at the new grid's positions (border padding).

    ``warp(x, compose_flows(previous, new)) ≈ warp(warp(x, previous), new)``.  Composing two identity grids gives
    the identity grid.

    Args:
        previous: B×2×h×w flow applied first (normalized grid).
        new: B×2×h×w flow estimated on top of it (normalized grid).

    Returns:
        B×2×h×w fp32 flow.
    """
    return warp(previous, new, padding_mode="border")


def upsample_flow(flow: Tensor, scale_factor: int = 2) -> Tensor:
    """Bilinear ×``scale_factor`` resize of a normalized grid (align_corners=False, as published).

    Values are normalized coordinates, so they are not rescaled.  Returns fp32.
    """
    with fp32_region(flow.device):
        return F.interpolate(flow.float(), scale_factor=scale_factor, mode="bilinear", align_corners=False)
