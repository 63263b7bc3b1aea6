"""Parser-like corruption of an exact parsing map (what a real human parser gets wrong)."""

from __future__ import annotations

import numpy as np

from pfafn.synthetic import labels as L

# For a mislabelled blob centred on a pixel of label k: the labels a real parser confuses k with.
_CONFUSIONS: dict[int, tuple[int, ...]] = {
    L.UPPER_CLOTHES: (L.LEFT_ARM, L.RIGHT_ARM, L.LEFT_ARM, L.RIGHT_ARM, L.NOISE, L.NOISE, L.PANTS, L.BACKGROUND),
    L.LEFT_ARM: (L.RIGHT_ARM, L.UPPER_CLOTHES, L.UPPER_CLOTHES),
    L.RIGHT_ARM: (L.LEFT_ARM, L.UPPER_CLOTHES, L.UPPER_CLOTHES),
    L.FACE: (L.HAIR, L.HAIR, L.UPPER_CLOTHES),
    L.HAIR: (L.FACE, L.BACKGROUND, L.UPPER_CLOTHES),
    L.PANTS: (L.UPPER_CLOTHES, L.LEFT_LEG, L.RIGHT_LEG),
    L.LEFT_LEG: (L.RIGHT_LEG, L.PANTS),
    L.RIGHT_LEG: (L.LEFT_LEG, L.PANTS),
}


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int], sigma: float) -> np.ndarray:
    """A smooth random displacement component: coarse normal noise, bilinearly upsampled to ``shape``."""
    from scipy import ndimage

    coarse = rng.normal(0.0, sigma, cells)
    h, w = shape
    ys = np.linspace(0.0, cells[0] - 1.0, h)[:, None]
    xs = np.linspace(0.0, cells[1] - 1.0, w)[None, :]
    return ndimage.map_coordinates(coarse, np.broadcast_arrays(ys, xs), order=1, mode="nearest")


def corrupt_parsing(parsing: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Corrupt an exact 14-class parsing the way real parsers fail, deterministically from ``rng``.

    ``amount`` in [0, 1] scales every effect (0 returns an exact copy):

    1. wobbly boundaries and a small global shift: the map is resampled (nearest) through a smooth random
       displacement field of a few pixels (scaled with the image size);
    2. boundary erosion / dilation of a few labels by 1..3 pixels (eroded pixels take the nearest other label);
    3. mislabelled blobs: elliptic patches inside the person where one label is replaced by a label real parsers
       confuse it with (upper clothes ↔ arms, left ↔ right arm, face ↔ hair, pants ↔ upper clothes / legs, and
       the junk label 7 "noise" inside upper clothes).
    """
    from scipy import ndimage

    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"parsing noise amount must be in [0, 1], got {amount}")
    exact = np.asarray(parsing)
    if exact.ndim != 2:
        raise ValueError(f"parsing must be H×W, got shape {exact.shape}")
    out = exact.astype(np.uint8, copy=True)
    if amount == 0.0:
        return out
    h, w = out.shape
    unit = min(h / 256.0, w / 192.0)

    # 1. smooth boundary displacement + global shift
    amp = 1.6 * amount * unit
    dy = _smooth_field(rng, (h, w), (7, 5), amp) + rng.normal(0.0, amp * 0.6)
    dx = _smooth_field(rng, (h, w), (7, 5), amp) + rng.normal(0.0, amp * 0.6)
    yy = np.clip(np.rint(np.arange(h)[:, None] + dy), 0, h - 1).astype(np.intp)
    xx = np.clip(np.rint(np.arange(w)[None, :] + dx), 0, w - 1).astype(np.intp)
    out = out[yy, xx]

    # 2. erosion / dilation of a few labels
    present = [int(v) for v in np.unique(out) if v != L.BACKGROUND]
    if present:
        n_ops = 1 + int(rng.binomial(3, amount))
        for label in rng.choice(present, size=min(n_ops, len(present)), replace=False):
            iters = max(1, int(round(rng.uniform(0.5, 2.5) * amount * unit + 0.5)))
            region = out == label
            if rng.random() < 0.5:
                grown = ndimage.binary_dilation(region, iterations=iters)
                # parsers bleed into neighbouring body labels far more often than into the background
                target = grown & ~region & ((out != L.BACKGROUND) | (rng.random() < 0.3))
                out[target] = label
            else:
                ring = region & ~ndimage.binary_erosion(region, iterations=iters)
                if ring.any() and not ring.all():
                    idx = ndimage.distance_transform_edt(region, return_distances=False, return_indices=True)
                    out[ring] = out[idx[0][ring], idx[1][ring]]

    # 3. mislabelled blobs inside the person
    fg_y, fg_x = np.nonzero(out != L.BACKGROUND)
    if fg_y.size:
        n_blobs = int(rng.poisson(1.0 + 4.0 * amount))
        for _ in range(n_blobs):
            k = int(rng.integers(fg_y.size))
            cy, cx = int(fg_y[k]), int(fg_x[k])
            src = int(out[cy, cx])
            choices = _CONFUSIONS.get(src)
            if not choices:
                continue
            dst = int(choices[int(rng.integers(len(choices)))])
            ry = max(1.5, rng.uniform(2.0, 2.0 + 8.0 * amount) * unit)
            rx = max(1.5, ry * rng.uniform(0.5, 1.6))
            y0, y1 = max(int(cy - ry - 1), 0), min(int(cy + ry + 2), h)
            x0, x1 = max(int(cx - rx - 1), 0), min(int(cx + rx + 2), w)
            yy2 = (np.arange(y0, y1)[:, None] - cy) / ry
            xx2 = (np.arange(x0, x1)[None, :] - cx) / rx
            blob = (yy2 * yy2 + xx2 * xx2) <= 1.0
            view = out[y0:y1, x0:x1]
            view[blob & (view == src)] = dst
    return out
