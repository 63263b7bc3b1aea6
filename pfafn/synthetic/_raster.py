"""Small vectorised 2-D rasteriser used by the synthetic world (numpy only).

Shapes are described by a *signed distance in pixels* (positive inside) evaluated on the pixel centres of a
bounding box. Coverage for anti-aliasing is ``clip(sd + 0.5, 0, 1)``, and a pixel belongs to a shape's label
exactly when ``sd >= 0`` (coverage >= 0.5), so images and label maps always agree.

Pixel ``(x, y)`` has its centre at integer coordinates ``(x, y)`` — the same convention as OpenPose keypoints and
``grid_sample(..., align_corners=True)``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

F32 = np.float32


@dataclass(frozen=True)
class Box:
    """A half-open pixel rectangle ``[y0, y1) × [x0, x1)`` with its centre-coordinate grids."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def ys(self) -> np.ndarray:
        """Row coordinates, shape (h, 1)."""
        return np.arange(self.y0, self.y1, dtype=F32)[:, None]

    @property
    def xs(self) -> np.ndarray:
        """Column coordinates, shape (1, w)."""
        return np.arange(self.x0, self.x1, dtype=F32)[None, :]


def box_around(points: np.ndarray, margin: float, height: int, width: int) -> Box | None:
    """The pixel box containing ``points`` (n×2, x/y in pixels) grown by ``margin``, clipped; None if empty."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x0 = max(int(np.floor(pts[:, 0].min() - margin)), 0)
    x1 = min(int(np.ceil(pts[:, 0].max() + margin)) + 1, width)
    y0 = max(int(np.floor(pts[:, 1].min() - margin)), 0)
    y1 = min(int(np.ceil(pts[:, 1].max() + margin)) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return Box(y0, y1, x0, x1)


@dataclass
class Capsule:
    """A tapered capsule (segment a→b with radius ra at a, rb at b) evaluated at a set of points.

    Attributes (float32 arrays shaped like the points; lengths in the units of the points' frame):
      sd      signed distance to the outline (positive inside)
      t       projection parameter clamped to [0, 1]
      along   unclamped distance along a→b from a
      across  signed perpendicular offset, positive on the ``normal_sign · (-dy, dx)`` side
      radius  the capsule radius at t
    """

    sd: np.ndarray
    t: np.ndarray
    along: np.ndarray
    across: np.ndarray
    radius: np.ndarray


def capsule(
    xs: np.ndarray, ys: np.ndarray, a: tuple[float, float], b: tuple[float, float], ra: float, rb: float,
    normal_sign: float = 1.0,
) -> Capsule:
    """Evaluate a tapered capsule at points (xs, ys) (any broadcastable arrays, any coordinate frame).

    Distances come out in the units of the frame. ``across`` is measured along ``normal_sign * (-dy, dx)`` where
    (dx, dy) is the unit direction a→b.
    """
    dx, dy = float(b[0] - a[0]), float(b[1] - a[1])
    length = max(float(np.hypot(dx, dy)), 1e-6)
    ux, uy = F32(dx / length), F32(dy / length)
    rx, ry = xs - F32(a[0]), ys - F32(a[1])
    along = rx * ux + ry * uy
    across = (ry * ux - rx * uy) * F32(normal_sign)
    t = np.clip(along * F32(1.0 / length), F32(0.0), F32(1.0))
    ex = rx - t * F32(dx)
    ey = ry - t * F32(dy)
    radius = F32(ra) + F32(rb - ra) * t
    sd = radius - np.sqrt(ex * ex + ey * ey)
    return Capsule(sd=sd, t=t, along=along, across=across, radius=radius)


def ellipse_sd(
    xs: np.ndarray, ys: np.ndarray, center: tuple[float, float], rx: float, ry: float, angle: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate signed distance to a rotated ellipse at points (xs, ys), plus local coordinates (u, v).

    (u, v) are in radii units (u^2 + v^2 = 1 on the outline). The distance is the first-order estimate
    ``(1 - q) / |grad q|`` with q the normalised radius: exact on the outline and accurate near it, which is all
    anti-aliasing and labelling need.
    """
    c, s = F32(np.cos(angle)), F32(np.sin(angle))
    px, py = xs - F32(center[0]), ys - F32(center[1])
    lx = px * c + py * s
    ly = py * c - px * s
    u = lx * F32(1.0 / rx)
    v = ly * F32(1.0 / ry)
    q = np.sqrt(u * u + v * v)
    grad = np.sqrt((u * F32(1.0 / rx)) ** 2 + (v * F32(1.0 / ry)) ** 2) / np.maximum(q, F32(1e-6))
    sd = (F32(1.0) - q) / np.maximum(grad, F32(1e-6))
    return sd, u, v


class Canvas:
    """An RGB float32 image in [0, 1] plus the parsing and DensePose maps, painted back to front."""

    def __init__(self, background: np.ndarray) -> None:
        self.rgb = np.ascontiguousarray(background, dtype=F32)
        self.height, self.width = self.rgb.shape[:2]
        self.parsing = np.zeros((self.height, self.width), np.uint8)
        self.densepose = np.zeros((self.height, self.width), np.uint8)
        # Normalised (x, y) source coordinates in the product photo of the garment pixel painted last.
        self.garment_grid = np.full((self.height, self.width, 2), -2.0, F32)

    def paint(
        self,
        box: Box,
        sd: np.ndarray,
        color: np.ndarray,
        label: int | np.ndarray | None,
        densepose: int | np.ndarray | None,
        shade: np.ndarray | None = None,
        cover: np.ndarray | None = None,
    ) -> np.ndarray:
        """Alpha-blend ``color`` where ``sd`` covers the box and write labels where ``sd >= 0``.

        ``color`` is an RGB triple, or an (n, 3) array holding the colours of the ``cover`` pixels in row-major
        order (``cover`` is then required). ``shade`` multiplies the colour: an h×w array, or n values when the
        colour is given per covered pixel. ``label`` / ``densepose`` are scalars, h×w arrays, or None to leave
        that map untouched. Returns the boolean ``sd >= 0`` mask of the box (the pixels whose labels were written).
        """
        h, w = sd.shape
        alpha = clamp(sd + F32(0.5), 0.0, 1.0)[:, :, None]
        col = np.asarray(color, dtype=F32)
        if col.ndim == 2:  # per covered pixel
            if cover is None:
                raise ValueError("per-pixel colours need the cover mask they were computed on")
            if shade is not None:
                col = col * shade[:, None]
            full = np.zeros((h, w, 3), F32)
            full[cover] = col
        elif shade is not None:
            full = shade[:, :, None] * col[None, None, :]
        else:
            full = np.broadcast_to(col, (h, w, 3))
        view = self.rgb[box.slices]
        delta = full - view
        delta *= alpha
        view += delta
        inside = sd >= F32(0.0)
        if label is not None:
            np.copyto(self.parsing[box.slices], label, where=inside, casting="unsafe")
        if densepose is not None:
            np.copyto(self.densepose[box.slices], densepose, where=inside, casting="unsafe")
        return inside


def clamp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``np.clip`` without its Python-level overhead (matters for the many small arrays of a render)."""
    return np.minimum(np.maximum(x, F32(lo)), F32(hi))


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB float32 triple in [0, 1] from HSV (hue in [0, 1), wraps)."""
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), dtype=F32)


def mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return (np.asarray(a, F32) * F32(1.0 - t) + np.asarray(b, F32) * F32(t)).astype(F32)


class SmoothProfile:
    """A smooth 1-D profile through knots (monotone cubic Hermite), tabulated so evaluation is one np.interp."""

    def __init__(self, knots_x: np.ndarray, knots_y: np.ndarray, samples: int = 256) -> None:
        kx = np.asarray(knots_x, np.float64)
        ky = np.asarray(knots_y, np.float64)
        self.x = np.linspace(kx[0], kx[-1], samples)
        self.y = _pchip(kx, ky, self.x).astype(F32)
        self.x = self.x.astype(F32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.x, self.y).astype(F32, copy=False)


def _pchip(x: np.ndarray, y: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """Fritsch–Carlson monotone cubic interpolation (small, dependency-free version of scipy's PCHIP)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    d = np.zeros_like(y)
    for k in range(1, len(x) - 1):
        if delta[k - 1] * delta[k] > 0:
            w1 = 2 * h[k] + h[k - 1]
            w2 = h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
    d[0] = delta[0]
    d[-1] = delta[-1]
    k = np.clip(np.searchsorted(x, xi) - 1, 0, len(x) - 2)
    t = (xi - x[k]) / h[k]
    h00 = (1 + 2 * t) * (1 - t) ** 2
    h10 = t * (1 - t) ** 2
    h01 = t * t * (3 - 2 * t)
    h11 = t * t * (t - 1)
    return h00 * y[k] + h10 * h[k] * d[k] + h01 * y[k + 1] + h11 * h[k] * d[k + 1]
