"""The try-on at the person photo's own size, with the garment sampled from the original garment photo.

PF-AFN runs at a fixed model size (256×192 published): the person and garment photos are letterboxed into it
(:func:`pfafn.imageio.fit_image`) and the try-on comes out at that size. Upscaling it blurs the garment, the part a
catalog is about. But the appearance flow is resolution-free: it is a *normalised sampling grid* into the garment
(``pfafn.nn.flow``; Ge et al., "Parser-Free Virtual Try-on via Distilling Appearance Flows", CVPR 2021, §3.1), so
it can be upsampled and used to sample the **original** garment photo at full resolution. This module:

1. maps every pixel of the original person photo into the model canvas (the inverse of the letterbox,
   :func:`pfafn.imageio.fit_geometry`) and samples the low-res outputs there (bilinear: flow, rendering, the
   generator's blend mask, the change region; the flow as its offset from the identity grid);
2. converts the flow's coordinates from the garment's model canvas to pixels of the original garment photo (undoing
   the garment's own letterbox) and samples the photo and its mask there: a sharp warped garment and warped mask;
   — where the garment lands smaller than in its photo, the photo is low-passed to that scale first (antialiased
   bicubic resize) and sampled bicubically, so detail the output cannot hold is filtered, not aliased into moiré;
3. composites as published (:func:`pfafn.tryon.compose_tryon`): ``m = sigmoid(logit) · warped_mask``,
   ``tryon = garment · m + rendered · (1 - m)``, where only ``rendered`` (skin, arms) and ``sigmoid(logit)`` come
   from the model resolution;
4. places the result into the original photo only inside the *change region* (:func:`change_region`: the new
   garment ∪ where the model's try-on differs from its person input, dilated and feathered); outside it every pixel
   is the original one, bit for bit.

Everything is torch on CPU (or any device), one pair at a time; no Ray, no storage.

The actor → writer hand-over is one float32 array per pair, ``H×W×8`` at the model size (:func:`pack_lowres`):

====  =========================================================================================================
 ch   content
====  =========================================================================================================
 0-1  flow x, y: normalised sampling grid into the garment's model canvas (align_corners=True), fp32
 2-4  rendered RGB, tanh output in [-1, 1]
 5    blend mask ``sigmoid(logit)`` (before × warped mask)
 6    change region, soft alpha in [0, 1] (already dilated and feathered)
 7    the garment's binarised mask in its model canvas (used when no full-resolution mask exists)
====  =========================================================================================================
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pfafn.imageio import FitGeometry, fit_geometry
from pfafn.nn.flow import identity_grid

__all__ = ["LOWRES_CHANNELS", "change_region", "pack_lowres", "canvas_grid", "garment_grid", "compose_fullres"]

LOWRES_CHANNELS = 8

#: A pixel counts as changed when the model's try-on differs from its person input by more than this (max over the
#: channels, in [0, 1] units: about 20/255, above JPEG noise and the generator's small re-rendering differences).
CHANGE_THRESHOLD = 0.08
#: Dilation and feathering radii at the published model height (256), scaled with the model height: the garment's
#: edge and the old garment's remains stay inside the region; the seam fades over a few pixels.
DILATE_PX, FEATHER_PX, REFERENCE_HEIGHT = 3, 2, 256


def change_region(tryon: Tensor, person: Tensor, composite_mask: Tensor, *, threshold: float = CHANGE_THRESHOLD,
                  dilate: int | None = None, feather: int | None = None) -> Tensor:
    """Soft alpha (B×1×H×W in [0, 1]) of where the try-on changed the person, at the model size.

    Args:
        tryon, person: B×3×H×W in [-1, 1], the model's output and its (letterboxed) person input.
        composite_mask: B×1×H×W, the new garment (``sigmoid · warped_mask``).
        threshold: per-pixel change, max over RGB, in [0, 1] units.
        dilate, feather: radii in model pixels (default :data:`DILATE_PX` / :data:`FEATHER_PX` scaled to H / 256).
    The changed set is dilated by ``dilate`` (max pool), then box-blurred by ``feather``; with ``dilate >= feather``
    the changed set itself keeps alpha 1, and alpha is exactly 0 farther than ``dilate + feather`` from it.
    """
    scale = tryon.shape[-2] / REFERENCE_HEIGHT
    dilate = max(1, round(DILATE_PX * scale)) if dilate is None else dilate
    feather = max(1, round(FEATHER_PX * scale)) if feather is None else feather
    diff = (tryon.float() - person.float()).abs().amax(1, keepdim=True) / 2  # [-1, 1] → [0, 1] units
    changed = ((diff > threshold) | (composite_mask.float() > 1 / 255)).float()
    if dilate > 0:
        changed = F.max_pool2d(changed, 2 * dilate + 1, stride=1, padding=dilate)
    if feather > 0:
        changed = F.avg_pool2d(changed, 2 * feather + 1, stride=1, padding=feather, count_include_pad=False)
    return changed.clamp(0, 1)


def pack_lowres(flow: Tensor, rendered: Tensor, blend_mask: Tensor, region: Tensor, garment_mask: Tensor
                ) -> np.ndarray:
    """The hand-over array (B×H×W×8 float32, layout in the module docstring) of a batch of pairs."""
    stacked = torch.cat([flow.float(), rendered.float(), blend_mask.float(), region.float(), garment_mask.float()], 1)
    if stacked.shape[1] != LOWRES_CHANNELS:
        raise ValueError(f"expected {LOWRES_CHANNELS} channels, got {stacked.shape[1]}")
    return np.ascontiguousarray(stacked.permute(0, 2, 3, 1).cpu().numpy(), dtype=np.float32)


def _axis(size: int) -> float:
    return max(size - 1, 1) / 2.0


def canvas_grid(geom: FitGeometry, device: torch.device | str = "cpu") -> Tensor:
    """1×Hs×Ws×2 grid (x first, align_corners=True) placing every pixel centre of the *source* image of ``geom``
    at its position in the model canvas: sampling a canvas tensor with it removes the letterbox and resizes."""
    xs = (torch.arange(geom.src_width, device=device, dtype=torch.float64) + 0.5) * geom.scale_x - 0.5 + geom.left
    ys = (torch.arange(geom.src_height, device=device, dtype=torch.float64) + 0.5) * geom.scale_y - 0.5 + geom.top
    gx = (xs / _axis(geom.width) - 1).float().view(1, -1).expand(geom.src_height, -1)
    gy = (ys / _axis(geom.height) - 1).float().view(-1, 1).expand(-1, geom.src_width)
    return torch.stack([gx, gy], -1).unsqueeze(0)


def garment_grid(flow: Tensor, geom: FitGeometry, to_size: tuple[int, int] | None = None) -> Tensor:
    """Flow (B×2×h×w, normalised coordinates in the garment's model canvas) → B×h×w×2 normalised coordinates in the
    original garment photo of ``geom`` (the inverse of its letterbox: an affine map per axis), or in that photo
    resized to ``to_size`` (height, width; pixel centres mapped like ``F.interpolate(align_corners=False)``)."""
    to_h, to_w = to_size or (geom.src_height, geom.src_width)
    out = []
    for c, (size, src, scale, offset, dst) in enumerate(((geom.width, geom.src_width, geom.scale_x, geom.left, to_w),
                                                          (geom.height, geom.src_height, geom.scale_y, geom.top,
                                                           to_h))):
        canvas_px = (flow[:, c].double() + 1) * _axis(size)
        src_px = (canvas_px - offset + 0.5) / scale - 0.5
        dst_px = (src_px + 0.5) * (dst / src) - 0.5
        out.append((dst_px / _axis(dst) - 1).float())
    return torch.stack(out, -1)


def _shrink(grid: Tensor, geom: FitGeometry, where: Tensor) -> float:
    """How many garment-photo pixels one output pixel spans where the garment lands (the median over ``where`` of
    the grid's larger step per output pixel): above 1 the photo must be low-passed before sampling, or its fine
    patterns alias into moiré."""
    px = (grid[0].double() + 1) * torch.tensor([_axis(geom.src_width), _axis(geom.src_height)], dtype=torch.float64,
                                                device=grid.device)
    dx = (px[:, 1:] - px[:, :-1]).norm(dim=-1)[:-1]
    dy = (px[1:] - px[:-1]).norm(dim=-1)[:, :-1]
    step = torch.maximum(dx, dy)[where[0, 0, :-1, :-1] > 0.5]
    return float(step.median()) if step.numel() else 1.0


def _prefiltered(garment: Tensor, shrink: float) -> Tensor:
    """The garment (premultiplied colour + mask) resized by ``1 / shrink`` with an antialiasing filter when it is
    drawn smaller than its photo; unchanged otherwise."""
    if shrink <= 1.25:  # bilinear sampling alone is fine up to a mild shrink
        return garment
    size = (max(2, round(garment.shape[-2] / shrink)), max(2, round(garment.shape[-1] / shrink)))
    small = F.interpolate(garment, size=size, mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([small[:, :3].clamp(0, 255), small[:, 3:].clamp(0, 1)], 1)  # bicubic overshoots


def _image_tensor(img: np.ndarray, device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1).unsqueeze(0).float()


def _sample(t: Tensor, grid: Tensor, padding: str = "border") -> Tensor:
    return F.grid_sample(t, grid, mode="bilinear", padding_mode=padding, align_corners=True)


def _full_mask(garment_mask: np.ndarray | None, canvas_mask: Tensor, geom: FitGeometry, device) -> Tensor:
    """The garment photo's binarised mask (1×1×Hg×Wg): the given one, or the model canvas' mask resized back to the
    photo (``> 0.5`` as published, :meth:`pfafn.tryon.TryOnModel.prepare_garment`)."""
    if garment_mask is None:
        return (_sample(canvas_mask, canvas_grid(geom, device)) > 0.5).float()
    m = torch.from_numpy(np.ascontiguousarray(garment_mask)).to(device)
    m = m.float() / 255 if m.dtype == torch.uint8 else m.float()
    if m.shape != (geom.src_height, geom.src_width):
        raise ValueError(f"garment mask is {tuple(m.shape)}, the garment photo {geom.src_height}x{geom.src_width}")
    return (m > 0.5).float()[None, None]


@torch.inference_mode()
def compose_fullres(person: np.ndarray, garment: np.ndarray, garment_mask: np.ndarray | None, lowres: np.ndarray,
                    *, device: torch.device | str = "cpu") -> np.ndarray:
    """The try-on of one pair at the person photo's size (uint8 Hp×Wp×3).

    Args:
        person: the original person photo, uint8 Hp×Wp×3 (as :func:`pfafn.imageio.decode_image` returns it).
        garment: the original garment photo, uint8 Hg×Wg×3.
        garment_mask: its mask (Hg×Wg, uint8 0..255, bool or float in [0, 1]), or None to use channel 7 of
            ``lowres`` resized back to the photo.
        lowres: the pair's H×W×8 hand-over array (:func:`pack_lowres`); H×W is the model size.
    Pixels where the change region is 0 are returned unchanged.
    """
    h, w, c = lowres.shape
    if c != LOWRES_CHANNELS:
        raise ValueError(f"lowres must be H×W×{LOWRES_CHANNELS}, got {lowres.shape}")
    p_geom = fit_geometry(person.shape[0], person.shape[1], h, w)
    g_geom = fit_geometry(garment.shape[0], garment.shape[1], h, w)
    low = torch.from_numpy(np.array(lowres, dtype=np.float32)).to(device).permute(2, 0, 1).unsqueeze(0)
    grid = canvas_grid(p_geom, device)
    # The flow is upsampled as its offset from the identity (plus the exact identity at each photo pixel): border
    # padding then extends the last offset past the outermost canvas pixel centres instead of clamping positions.
    offsets = torch.cat([low[:, :2] - identity_grid(1, h, w, device), low[:, 2:7]], 1)
    up = _sample(offsets, grid)  # 1×7×Hp×Wp
    flow = up[:, :2] + grid.permute(0, 3, 1, 2)
    rendered, blend, region = up[:, 2:5], up[:, 5:6], up[:, 6:7]
    mask = _full_mask(garment_mask, low[:, 7:8], g_geom, device)
    garment_t = _image_tensor(garment, device)
    # Premultiplied sampling: the colour at a silhouette edge is the garment's own, not mixed with its background.
    # Where the garment lands smaller than in its photo, sample a low-passed copy at that scale (no moiré).
    source, grid = torch.cat([garment_t * mask, mask], 1), garment_grid(flow, g_geom)
    source = _prefiltered(source, _shrink(grid, g_geom, blend * region))
    if source.shape[-2:] != garment_t.shape[-2:]:  # low-passed to a smaller size: its own pixel grid
        grid = garment_grid(flow, g_geom, tuple(source.shape[-2:]))
    warped = F.grid_sample(source, grid, mode="bicubic", padding_mode="zeros", align_corners=True)
    warped = torch.cat([warped[:, :3].clamp_min(0), warped[:, 3:].clamp(0, 1)], 1)
    warped_mask = warped[:, 3:4]
    colour = torch.where(warped_mask > 1e-6, warped[:, :3] / warped_mask.clamp_min(1e-6), torch.zeros(()))
    m = blend * warped_mask
    tryon = colour * m + (rendered + 1) * 127.5 * (1 - m)
    original = _image_tensor(person, device)
    out = original + region * (tryon - original)
    out = out.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    return np.ascontiguousarray(out.cpu().numpy())
