"""Garment masks for product photos on plain backgrounds (numpy + scipy; no torch, no Ray).

PF-AFN needs a binary garment mask next to every garment photo. Catalog photos rarely ship one, but they are shot
on a plain studio background, so the mask can be recovered from colour alone. Photos larger than
``MaskParams.max_side`` are analysed downscaled and the mask is scaled back.

1. **Background model** from the image border (a band ~2% of the short side), in CIELAB after a light Gaussian
   denoising: the robust median colour refined by a low-order polynomial surface (constant → linear → quadratic,
   the lowest order that explains the border), so gentle gradients and vignetting belong to the background. The
   border must be nearly uniform around that model, otherwise the photo is refused (:class:`GarmentMaskError`).
2. **Foreground evidence**, split into what a shadow cannot do and what it can. Thresholds adapt to the border's
   noise (``noise_k·σ``) and never go below a floor.
   * *strong* pixels — a chroma change beyond what darkening the background would give, a pixel *lighter* than the
     background (a white garment on an off-white sweep), or one darker than any soft shadow;
   * *dark-only* pixels — darker than the background with its chroma: a shadow, or a grey/black/near-white garment.
     They are cut along *sharp* lightness edges (slope large relative to the local lightness range: an
     anti-aliased outline, not a blurred shadow's fade), and each piece is judged by how it meets the open
     background: a garment piece meets it through sharp edges, a shadow fades into it (soft contact share above
     ``shadow_soft_contact``). A "shadow" larger than everything kept is implausible — it is a light garment whose
     hem merged with its own shadow — and is kept, with lower confidence.
   * sharp dark outlines connected to the kept evidence join it: the faint darker rim that closes a near-white
     garment, or the white stripes of one, against a white background.
3. **Clean-up**: closing, holes filled (the outline encloses the garment), opening, the largest 8-connected
   component, holes filled; then a sub-pixel **edge refinement** that treats each pixel within 2 px of the outline
   as a mix of the nearest garment and background colours and keeps it when its garment share is ≥ 0.5 (the rule of
   an anti-aliased mask's ``coverage ≥ 0.5``; it also trims JPEG chroma bleeding).

The result carries a ``confidence`` in [0, 1]: border uniformity × noise × share of the outline clearly visible ×
how free the garment is of the frame × (0.6 when a shadow/garment ambiguity was resolved by keeping both) ×
(share of the foreground evidence inside the mask)². The catalog treats < 0.5 as unusable. Photos that do not look
like plain-background product shots raise :class:`GarmentMaskError` with a one-line reason: busy or non-uniform
border, garment covering most of the border or 3+ sides of the frame, empty or tiny foreground, foreground filling
the frame.

Limits (see docs/garment-masks.md for measured numbers): a garment of exactly the background's colour and
lightness is visible only through its outline; where that outline runs through the garment's own shadow (white
stripes ending at the shadowed side of a white-on-white garment) the stripe ends can be lost with high confidence;
a grey garment merged with an equally dark shadow keeps the shadow (lower confidence); only the largest item is
kept (a pair of socks yields one sock).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["GarmentMask", "GarmentMaskError", "MaskParams", "extract_garment_mask", "rgb_to_lab"]


class GarmentMaskError(ValueError):
    """The photo does not look like a plain-background product shot. ``reason`` is one line."""

    def __init__(self, reason: str):
        self.reason = " ".join(str(reason).split())
        super().__init__(self.reason)

    def __reduce__(self):
        return (type(self), (self.reason,))


@dataclass(frozen=True)
class GarmentMask:
    """``mask``: bool H×W, True on the garment. ``confidence`` in [0, 1] (≥ 0.5 is usable, see the module doc)."""

    mask: np.ndarray
    confidence: float


@dataclass(frozen=True)
class MaskParams:
    """Tuning knobs (defaults validated on the synthetic world and the hand-made hard cases in the tests)."""

    border_fraction: float = 0.02  # border band width as a fraction of the short side (≥ 2 px)
    max_side: int = 768  # larger photos are analysed at this size; the mask is scaled back
    busy_border_delta_e: float = 7.0  # median border deviation (ΔE) above which the background is "busy"
    min_border_inliers: float = 0.6  # fraction of border pixels that must match the background
    inlier_delta_e: float = 6.0  # floor of the border inlier distance
    noise_k: float = 3.5  # foreground thresholds are max(floor, noise_k·σ_border)
    chroma_floor: float = 3.75  # ΔE floor for the chroma test
    light_floor: float = 2.0  # ΔL floor for "lighter than the background"
    dark_floor: float = 2.0  # ΔL floor for "darker than the background"
    deep_dark: float = 40.0  # ΔL below −deep_dark is never a soft shadow
    edge_slope_floor: float = 0.8  # minimum ΔL per pixel of a sharp edge
    edge_relative_slope: float = 0.28  # sharp edge: slope ≥ this × local lightness range (soft shadow ≈ 0.15)
    edge_absolute_slope: float = 4.0  # any slope above this is sharp (soft shadows of ≤ 30 ΔL stay below)
    smoothing_sigma: float = 0.8  # Gaussian denoising (px) before classification; edges are refined on raw pixels
    shadow_soft_contact: float = 0.3  # a dark region meeting the background softly on more of its outline: shadow
    max_border_touch: float = 0.4  # fraction of the frame the garment may cover
    min_area_fraction: float = 0.005  # smaller foreground → refusal
    max_area_fraction: float = 0.97  # larger foreground → refusal
    refine_edges: bool = True


# ----------------------------------------------------------------------------------------------------------------------
# Colour


_SRGB_LINEAR = np.where(
    (np.arange(256) / 255.0) <= 0.04045,
    (np.arange(256) / 255.0) / 12.92,
    (((np.arange(256) / 255.0) + 0.055) / 1.055) ** 2.4,
).astype(np.float32)
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float32,
)
_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)


def rgb_to_lab(img: np.ndarray) -> np.ndarray:
    """uint8 ``H×W×3`` sRGB → float32 ``H×W×3`` CIELAB (D65)."""
    lin = _SRGB_LINEAR[np.asarray(img, dtype=np.uint8)]
    xyz = lin @ (_RGB_TO_XYZ.T / _WHITE[None, :])
    eps = (6.0 / 29.0) ** 3
    f = np.where(xyz > eps, np.cbrt(np.maximum(xyz, eps)), xyz / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


# ----------------------------------------------------------------------------------------------------------------------
# Background model


def _design(xs: np.ndarray, ys: np.ndarray, order: int) -> np.ndarray:
    cols = [np.ones_like(xs)]
    if order >= 1:
        cols += [xs, ys]
    if order >= 2:
        cols += [xs * xs, ys * ys, xs * ys]
    return np.stack(cols, axis=-1)


@dataclass
class _Background:
    lab: np.ndarray  # H×W×3 model
    sigma: float  # typical deviation of inlier border pixels (ΔE)
    border_median_dev: float  # median deviation of all border pixels
    inlier_fraction: float
    side_inliers: tuple[float, float, float, float]  # top, bottom, left, right


def _border_mask(h: int, w: int, band: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[:band] = m[-band:] = True
    m[:, :band] = m[:, -band:] = True
    return m


def _robust_sigma(res: np.ndarray, floor: float) -> float:
    """Typical deviation of the inliers: the median of residuals below max(floor, 3·median)."""
    thr = max(floor, 3.0 * float(np.median(res)))
    sel = res[res < thr]
    return float(np.median(sel if sel.size else res))


def _fit_background(lab: np.ndarray, p: MaskParams) -> _Background:
    h, w, _ = lab.shape
    band = max(2, int(round(p.border_fraction * min(h, w))))
    border = _border_mask(h, w, band)
    yy, xx = np.nonzero(border)
    xs = (xx / max(w - 1, 1) * 2 - 1).astype(np.float32)
    ys = (yy / max(h - 1, 1) * 2 - 1).astype(np.float32)
    samples = lab[yy, xx]

    median = np.median(samples, axis=0)
    dev = np.linalg.norm(samples - median, axis=1)
    inlier_thr = max(p.inlier_delta_e, 3.0 * float(np.median(dev)))
    best = None
    for order in (0, 1, 2):
        inl = dev < inlier_thr
        coef = None
        for _ in range(3):  # iteratively re-weighted: refit on inliers of the current model
            if inl.sum() < 6 * (1 + 2 * order):
                break
            a = _design(xs[inl], ys[inl], order)
            coef, *_ = np.linalg.lstsq(a, samples[inl], rcond=None)
            res = np.linalg.norm(samples - _design(xs, ys, order) @ coef, axis=1)
            sigma = _robust_sigma(res, p.inlier_delta_e)
            inl = res < max(p.inlier_delta_e, 3.0 * sigma)
        if coef is None:
            continue
        res = np.linalg.norm(samples - _design(xs, ys, order) @ coef, axis=1)
        thr = max(p.inlier_delta_e, 3.0 * sigma)
        frac = float((res < thr).mean())
        cand = (order, coef, res, sigma, frac)
        # Prefer the lowest order unless a higher one explains clearly more of the border.
        if best is None or (frac > best[4] + 0.02) or (frac >= best[4] - 0.005 and sigma < 0.7 * best[3]):
            best = cand
    if best is None:  # degenerate (tiny image): constant median
        coef = median[None, :]
        res = dev
        best = (0, coef, res, float(np.median(dev)), float((dev < inlier_thr).mean()))
    order, coef, res, sigma, frac = best
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx = gx / max(w - 1, 1) * 2 - 1
    gy = gy / max(h - 1, 1) * 2 - 1
    model = (_design(gx, gy, order) @ coef).astype(np.float32)
    # Per-side inlier fractions (diagnostics for the refusal reason).
    thr = max(p.inlier_delta_e, 3.0 * sigma)
    ok = np.zeros((h, w), dtype=bool)
    ok[yy, xx] = res < thr
    sides = (ok[:band].mean(), ok[-band:].mean(), ok[:, :band].mean(), ok[:, -band:].mean())
    return _Background(model, sigma, float(np.median(res)), frac, tuple(float(s) for s in sides))


# ----------------------------------------------------------------------------------------------------------------------
# Foreground


def _sobel_slope(channel: np.ndarray) -> np.ndarray:
    """Gradient magnitude in units per pixel (a Sobel of a unit ramp is 8)."""
    gx = ndi.sobel(channel, axis=1, mode="nearest")
    gy = ndi.sobel(channel, axis=0, mode="nearest")
    return np.hypot(gx, gy) / 8.0


def _contacts(labels: np.ndarray, n: int, other: np.ndarray, frame: bool = False) -> np.ndarray:
    """Per label 1..n: the number of 4-neighbour pixel pairs (label pixel, ``other`` pixel). With ``frame``, the
    pixels just outside the image count as ``other`` (the background continues beyond a cropped photo)."""
    if frame:
        labels = np.pad(labels, 1, constant_values=0)
        other = np.pad(other, 1, constant_values=True)
    counts = np.zeros(n + 1, dtype=np.int64)
    for a, b in (
        (labels[1:, :], other[:-1, :]),
        (labels[:-1, :], other[1:, :]),
        (labels[:, 1:], other[:, :-1]),
        (labels[:, :-1], other[:, 1:]),
    ):
        counts += np.bincount(a[b], minlength=n + 1)
    return counts[1:]


def _foreground(lab: np.ndarray, bg: _Background, p: MaskParams) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """(foreground bool, distance ΔE map, threshold, shadow/garment ambiguity)."""
    d = lab - bg.lab
    d_l = d[..., 0]
    # Chroma expected if the pixel were the background darkened/lightened to its lightness (a shadow keeps the hue
    # and scales chroma roughly with lightness).
    ratio = np.clip(lab[..., 0] / np.maximum(bg.lab[..., 0], 1.0), 0.0, 1.5)
    d_ab = lab[..., 1:] - bg.lab[..., 1:] * ratio[..., None]
    d_chroma = np.linalg.norm(d_ab, axis=-1)
    noise = p.noise_k * bg.sigma
    t_chroma = max(p.chroma_floor, noise)
    t_light = max(p.light_floor, noise)
    t_dark = max(p.dark_floor, noise)
    dist = np.linalg.norm(d, axis=-1)

    strong = (d_chroma > t_chroma) | (d_l > t_light) | (d_l < -p.deep_dark)
    darker = d_l < -t_dark
    dark = darker & ~strong
    fg = strong.copy()
    ambiguous = False
    if dark.any():
        # Split the dark-only pixels along sharp lightness edges (a garment outline; a soft shadow has none), then
        # judge each piece by how it meets the plain background: a garment meets it through a sharp edge
        # everywhere, a shadow fades into it. "Sharp" is relative to the local lightness range (9×9): a blurred
        # shadow's steepest slope is ~0.15 of the range it spans, an anti-aliased outline's ~0.45.
        cross = ndi.generate_binary_structure(2, 1)
        lightness = lab[..., 0]
        # The local range ignores strong pixels: a coloured stripe next to a faint outline must not hide it.
        contrast = np.maximum(
            ndi.maximum_filter(np.where(strong, -np.inf, lightness), size=9)
            - ndi.minimum_filter(np.where(strong, np.inf, lightness), size=9),
            0.0,
        )
        slope = _sobel_slope(lightness)
        edge = (slope > np.maximum(max(p.edge_slope_floor, noise / 2.0), p.edge_relative_slope * contrast)) | (
            slope > max(p.edge_absolute_slope, noise))
        # Thickened by a pixel so a one-pixel gap in an outline (a concave corner) cannot join garment and shadow.
        thick_edge = ndi.binary_dilation(edge, structure=cross)
        core = dark & ~thick_edge
        labels, n = ndi.label(core, structure=cross)
        kept = np.zeros_like(dark)
        shadow = np.zeros_like(dark)
        if n:
            # The open background: plain pixels connected to the frame (not the light patches inside a garment).
            plain = ~(strong | darker | thick_edge)
            frame = np.zeros_like(plain)
            frame[0], frame[-1], frame[:, 0], frame[:, -1] = plain[0], plain[-1], plain[:, 0], plain[:, -1]
            plain = ndi.binary_propagation(frame, structure=cross, mask=plain)
            soft = _contacts(labels, n, plain, frame=True)
            # Only edges of the piece's own: the rim of a coloured garment next to its shadow does not count.
            own_edge = thick_edge & ~ndi.binary_dilation(strong, structure=np.ones((3, 3), dtype=bool), iterations=2)
            hard = _contacts(labels, n, own_edge)
            keep = soft <= p.shadow_soft_contact * np.maximum(soft + hard, 1)
            # A "shadow" larger than everything kept is implausible (a drop shadow shows as a crescent along the
            # outline): it is a light garment whose hem merged with its own shadow. Keep the largest such piece that
            # has an outline of its own, accept its shadow part, and report the ambiguity.
            sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            kept_area = int(ndi.binary_fill_holes(strong | np.concatenate([[False], keep])[labels]).sum())
            dropped = ~keep & (hard > 0)
            if dropped.any():
                biggest = int(np.argmax(np.where(dropped, sizes, -1)))
                if sizes[biggest] > kept_area:
                    keep[biggest] = True
                    ambiguous = True
            kept = np.concatenate([[False], keep])[labels]
            shadow = np.concatenate([[False], ~keep])[labels]
        # Sharp dark outlines connected to the garment belong to it: the rim around kept pieces, and the faint
        # outline that closes a near-white garment (or the white stripes of one) against a white background —
        # but not the steep inner edge of a shadow, next to the garment.
        seeds = kept | strong
        if seeds.any():
            rim = edge & darker & ~ndi.binary_dilation(shadow, structure=cross, iterations=2)
            fg |= ndi.binary_propagation(seeds, structure=np.ones((3, 3), bool), mask=rim | seeds)
    return fg, dist, min(t_chroma, t_light, t_dark), ambiguous


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _refine_edges(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Re-decide outline pixels by unmixing: pixel ≈ c·garment + (1−c)·background, keep where c ≥ 0.5.

    The band is 2 px on either side of the outline (JPEG chroma bleeding grows masks by up to 2 px); the garment
    colour is the nearest pixel 3 px inside, the background colour the nearest pixel 3 px outside.
    """
    cross = ndi.generate_binary_structure(2, 1)
    inner = ndi.binary_erosion(mask, cross, iterations=3)
    outer = ~ndi.binary_dilation(mask, cross, iterations=3)
    if not inner.any() or not outer.any():
        return mask
    band = ndi.binary_dilation(mask, cross, iterations=2) & ~ndi.binary_erosion(mask, cross, iterations=2)
    ys, xs = np.nonzero(band)
    if ys.size == 0:
        return mask
    rgb = img.astype(np.float32)
    dist_in, (iy, ix) = ndi.distance_transform_edt(~inner, return_indices=True)
    dist_out, (oy, ox) = ndi.distance_transform_edt(~outer, return_indices=True)
    f = rgb[iy[ys, xs], ix[ys, xs]]
    b = rgb[oy[ys, xs], ox[ys, xs]]
    px = rgb[ys, xs]
    fb = f - b
    denom = np.einsum("ij,ij->i", fb, fb)
    # Unmix only where garment and background colours differ enough and both references are local.
    usable = (denom >= 20.0**2) & (dist_in[ys, xs] <= 5.0) & (dist_out[ys, xs] <= 5.0)
    c = np.einsum("ij,ij->i", px - b, fb) / np.maximum(denom, 1e-6)
    out = mask.copy()
    out[ys[usable], xs[usable]] = c[usable] >= 0.5
    return out


def _resize_nearest_bool(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    yi = np.minimum((np.arange(h) + 0.5) * mask.shape[0] / h, mask.shape[0] - 1).astype(np.int64)
    xi = np.minimum((np.arange(w) + 0.5) * mask.shape[1] / w, mask.shape[1] - 1).astype(np.int64)
    return mask[yi][:, xi]


def extract_garment_mask(image: np.ndarray, params: MaskParams | None = None) -> GarmentMask:
    """Mask the garment in a plain-background product photo (``uint8 H×W×3`` RGB).

    Returns :class:`GarmentMask` (bool H×W at the input size, confidence in [0, 1]). Raises
    :class:`GarmentMaskError` when the photo is not a plain-background product shot (see the module docstring).
    """
    p = params or MaskParams()
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 H×W×3 image, got {img.dtype} {img.shape}")
    h0, w0 = img.shape[:2]
    if min(h0, w0) < 16:
        raise GarmentMaskError(f"image too small for mask extraction ({w0}x{h0})")
    work = _downscaled(img, p.max_side)
    lab = rgb_to_lab(work)
    if p.smoothing_sigma > 0:
        lab = ndi.gaussian_filter(lab, sigma=(p.smoothing_sigma, p.smoothing_sigma, 0), mode="nearest")
    bg = _fit_background(lab, p)
    _check_background(bg, p)
    evidence, dist, threshold, ambiguous = _foreground(lab, bg, p)
    evidence, fg = _clean_up(evidence, work, p)
    touching = _check_extent(fg, p)
    confidence = _confidence(bg, p, fg, evidence, dist, threshold, touching, ambiguous)
    if fg.shape != (h0, w0):
        fg = _resize_nearest_bool(fg, h0, w0)
    return GarmentMask(mask=np.ascontiguousarray(fg), confidence=round(confidence, 4))


def _downscaled(img: np.ndarray, max_side: int) -> np.ndarray:
    """``img`` box-filtered down so its longer side is ``max_side`` (unchanged when already that small)."""
    h0, w0 = img.shape[:2]
    scale = max(h0, w0) / max_side
    if scale <= 1.0:
        return img
    from PIL import Image

    size = (max(16, int(round(w0 / scale))), max(16, int(round(h0 / scale))))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BOX))


def _check_background(bg: _Background, p: MaskParams) -> None:
    """Refuse photos whose border is not one plain (possibly gently graded) background."""
    if bg.inlier_fraction < p.min_border_inliers:
        raise GarmentMaskError(
            f"not a plain-background photo: only {bg.inlier_fraction:.0%} of the border matches one background "
            f"colour (garment fills the frame, or a busy/non-uniform background)"
        )
    if bg.border_median_dev > p.busy_border_delta_e or bg.sigma > p.busy_border_delta_e:
        raise GarmentMaskError(
            f"busy or non-uniform background: border deviates {max(bg.border_median_dev, bg.sigma):.1f} ΔE "
            f"from a smooth background (limit {p.busy_border_delta_e:.1f})"
        )


def _clean_up(fg: np.ndarray, work: np.ndarray, p: MaskParams) -> tuple[np.ndarray, np.ndarray]:
    """``(evidence, mask)``: the cleaned foreground evidence and the garment mask made from it (its largest
    component, holes filled, edges refined)."""
    cross = ndi.generate_binary_structure(2, 1)
    # Close one-pixel gaps, fill what the outline encloses, and only then open (a thin outline must survive until
    # it has been filled).
    fg = ndi.binary_closing(fg, structure=cross, iterations=1, border_value=0)
    fg = ndi.binary_fill_holes(fg)
    fg = ndi.binary_opening(fg, structure=cross, iterations=1, border_value=0)
    if not fg.any():
        raise GarmentMaskError("no garment found: nothing differs from the background")
    mask = ndi.binary_fill_holes(_largest_component(fg))
    if p.refine_edges:
        mask = ndi.binary_fill_holes(_largest_component(_refine_edges(work, mask)))
    return fg, mask


def _check_extent(fg: np.ndarray, p: MaskParams) -> float:
    """Refuse masks too small, too large or cropped by the frame; return the share of the border they touch."""
    area = float(fg.mean())
    if area < p.min_area_fraction:
        raise GarmentMaskError(f"no garment found: foreground is only {area:.2%} of the image")
    if area > p.max_area_fraction:
        raise GarmentMaskError(f"foreground fills {area:.0%} of the image: not a product shot on a plain background")
    touching = float(np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]]).mean())
    sides = sum(float(side.mean()) > 0.1 for side in (fg[0], fg[-1], fg[:, 0], fg[:, -1]))
    if touching > p.max_border_touch or sides >= 3:
        raise GarmentMaskError(
            f"garment touches {touching:.0%} of the image border ({sides} sides): cropped too tightly for a "
            f"product shot"
        )
    return touching


def _confidence(bg: _Background, p: MaskParams, fg: np.ndarray, evidence: np.ndarray, dist: np.ndarray,
                threshold: float, touching: float, ambiguous: bool) -> float:
    """Border uniformity × noise × visible outline × how free the garment is of the frame × whether a
    shadow/garment ambiguity was resolved by keeping both × whether large pieces were left out."""
    c_border = float(np.clip((bg.inlier_fraction - p.min_border_inliers) / (0.95 - p.min_border_inliers), 0, 1))
    c_noise = float(np.clip(1.0 - bg.sigma / p.busy_border_delta_e, 0.0, 1.0))
    contour = fg & ~ndi.binary_erosion(fg, ndi.generate_binary_structure(2, 1))
    c_outline = float((ndi.maximum_filter(dist, size=3)[contour] > threshold).mean()) if contour.any() else 0.0
    c_touch = float(np.clip(1.0 - touching, 0.0, 1.0))
    c_shadow = 0.6 if ambiguous else 1.0
    # Foreground evidence left outside the mask (a garment split by background-coloured stripes, or an open outline
    # that could not be filled) makes the result doubtful.
    c_whole = float((evidence & fg).sum()) / max(float(evidence.sum()), 1.0)
    return float(np.clip(
        c_border * (0.5 + 0.5 * c_noise) * (0.25 + 0.75 * c_outline) * c_touch * c_shadow * c_whole**2, 0.0, 1.0))
