"""Garments of the synthetic world: shape, fabric texture and the product photo.

A garment lives in two coordinate systems:

* **canonical** ``(t, s)`` for the body part: ``t`` runs from the collar line (0) to the hem (~1), ``s`` across
  from the wearer's right edge (-1) to the left edge (+1); and ``(a, b)`` for a sleeve: ``a`` along the sleeve
  from the shoulder seam, ``b`` across it from the top/outer edge (-1) to the armpit/inner edge (+1).
  The cut (neckline, armholes, hem, sleeve ends) is defined in these coordinates only.
* the **fabric plane** ``(X, Y)`` in design units (1 unit = 1 pixel at 256×192): the garment laid flat, exactly as
  the product photo shows it (X = 0 on the centre line, Y = 0 on the collar line, image-right = +X = the wearer's
  left). The fabric texture (stripes, dots, checks, logo) is a function of ``(X, Y)`` only.

The product photo maps the plane to pixels with a similarity transform. A worn garment maps body pixels to
canonical coordinates through the body geometry and then to the plane, so every worn garment pixel shows the
fabric point it would show in the product photo: the worn garment is an exact (piecewise smooth, non-rigid) warp
of the product photo, which is what PF-AFN's flow network learns.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from pfafn.synthetic._raster import F32, clamp, hsv, mix

DESIGN_H = 256.0
DESIGN_W = 192.0

GARMENT_KINDS = ("tee", "long_sleeve", "tank")
PATTERNS = ("solid", "stripes", "dots", "checks")
PRODUCT_BACKGROUNDS = ("white", "off_white", "shadow")


@dataclass(frozen=True)
class Layout:
    """Where the 256×192 design canvas sits in an H×W image: pixel = offset + unit · design coordinate."""

    height: int
    width: int
    unit: float
    ox: float
    oy: float

    @staticmethod
    def for_size(height: int, width: int) -> Layout:
        unit = min(height / DESIGN_H, width / DESIGN_W)
        return Layout(height, width, unit, (width - DESIGN_W * unit) / 2.0, (height - DESIGN_H * unit) / 2.0)


@dataclass(frozen=True)
class Logo:
    shape: str  # "rect" | "ellipse"
    cx: float
    cy: float
    hw: float
    hh: float
    color: np.ndarray
    glyph: str  # "bar" | "ring" | "diamond" | "none"
    glyph_color: np.ndarray


@dataclass(frozen=True)
class GarmentSpec:
    """Everything that defines one garment (sampled once from the world seed and the garment index)."""

    kind: str
    neck: str
    # canonical cut
    drop: float  # top edge (shoulder line) t = drop·s² + shoulder rounding
    shoulder_round: float  # extra drop (t) of the rounded outer shoulder corner
    neck_width: float  # |s| half-width of the neckline
    neck_depth: float  # front neckline depth (t)
    back_neck_depth: float  # back neckline depth (t), visible inside the product photo's neckline
    strap_outer: float  # tank: |s| where the armhole starts (>= 1: no armhole)
    armhole_depth: float  # tank: armhole depth (t) at |s| = 1
    hem_curve: float  # hem at t = 1 + hem_curve·s²
    rib: float  # width of the collar/hem rib band, design units (0 = none)
    # flat layout (design units)
    length: float
    shoulder_hw: float
    hem_hw: float
    waist_in: float
    sleeve_angle: float  # radians below horizontal
    sleeve_length: float
    sleeve_hw0: float
    sleeve_hw1: float
    # product photo background
    background: str
    bg_color: np.ndarray
    shadow_offset: tuple[float, float]
    shadow_strength: float
    folds: tuple[tuple[float, float, float, float], ...]  # (angle, offset, width, depth) soft folds of the flat lay
    # fit on a body
    looseness: float  # torso width = body width · (1 + looseness)
    hem_level: float  # hem at hem_level · torso length below the neck base
    flare: float  # extra half-width at the hem, body units
    sleeve_cover: float  # tee: fraction of the upper arm covered; long sleeve: ~1 of the whole arm
    sleeve_looseness: float
    # appearance
    color_class: str
    base: np.ndarray
    second: np.ndarray
    pattern: str
    pattern_angle: float
    pattern_period: float
    pattern_duty: float
    pattern_phase: tuple[float, float]
    dots_staggered: bool
    logo: Logo | None
    # product photo placement: plane → design canvas is x = 96 + product_dx + scale·X, y = product_top + scale·Y
    product_scale: float
    product_dx: float
    product_top: float

    # -- canonical cut --------------------------------------------------------------------------------------------
    @property
    def has_sleeves(self) -> bool:
        return self.kind != "tank"

    def front_neck(self, s: np.ndarray) -> np.ndarray:
        """Depth (t) of the front neckline at s (0 outside the neckline)."""
        r = np.abs(s) * F32(1.0 / self.neck_width)
        inside = np.maximum(F32(1.0) - r, F32(0.0))
        if self.neck == "v":
            return F32(self.neck_depth) * inside
        return F32(self.neck_depth) * np.sqrt(np.maximum(F32(1.0) - r * r, F32(0.0)))

    def back_neck(self, s: np.ndarray) -> np.ndarray:
        r = np.abs(s) * F32(1.0 / self.neck_width)
        return F32(self.back_neck_depth) * np.sqrt(np.maximum(F32(1.0) - r * r, F32(0.0)))

    def armhole(self, s: np.ndarray) -> np.ndarray:
        if self.strap_outer >= 1.0:
            return np.zeros_like(s)
        r = (F32(1.0) - np.abs(s)) * F32(1.0 / (1.0 - self.strap_outer))
        return F32(self.armhole_depth) * np.sqrt(np.maximum(F32(1.0) - r * r, F32(0.0))) * (r < F32(1.0))

    def shoulder_line(self, s: np.ndarray) -> np.ndarray:
        """The collar-to-shoulder top edge (t): a gentle slope whose outer corner is rounded off."""
        corner = np.maximum((np.abs(s) - F32(0.72)) * F32(1.0 / 0.28), F32(0.0))
        return F32(self.drop) * s * s + F32(self.shoulder_round) * corner * corner

    def top_front(self, s: np.ndarray) -> np.ndarray:
        """Top contour of the worn garment (collar line, neckline, armholes) in t."""
        return np.maximum(np.maximum(self.shoulder_line(s), self.front_neck(s)), self.armhole(s))

    def top_back(self, s: np.ndarray) -> np.ndarray:
        """Top contour of the flat garment: the back panel shows through the front neckline."""
        return np.maximum(np.maximum(self.shoulder_line(s), self.back_neck(s)), self.armhole(s))

    def hem(self, s: np.ndarray) -> np.ndarray:
        return F32(1.0) + F32(self.hem_curve) * s * s

    # -- flat layout ------------------------------------------------------------------------------------------------
    def flat_hw(self, t: np.ndarray) -> np.ndarray:
        """Half-width of the flat body panel at t (design units)."""
        tc = clamp(t, 0.0, 1.1)
        return (
            F32(self.shoulder_hw)
            + F32(self.hem_hw - self.shoulder_hw) * tc
            - F32(self.waist_in) * np.sin(F32(math.pi) * clamp(tc, 0.0, 1.0))
        )

    def sleeve_frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seam midpoint M, direction d, normal n) of the image-right sleeve in the plane (mirror X for the left)."""
        phi = self.sleeve_angle
        d = np.array([math.cos(phi), math.sin(phi)])
        n = np.array([-math.sin(phi), math.cos(phi)])
        t_sp = self.drop + self.shoulder_round
        shoulder_point = np.array([float(self.flat_hw(np.float32(t_sp))), t_sp * self.length])
        return shoulder_point + self.sleeve_hw0 * n, d, n

    def flat_bounds(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of the flat garment in the plane."""
        t = np.linspace(0.0, 1.0, 33, dtype=F32)
        hw = self.flat_hw(t)
        xs = [float(hw.max())]
        ys = [0.0, float(self.length * (1.0 + max(self.hem_curve, 0.0)))]
        if self.has_sleeves:
            m, d, n = self.sleeve_frame()
            for a, half in ((0.0, self.sleeve_hw0), (self.sleeve_length, self.sleeve_hw1)):
                for b in (-1.0, 1.0):
                    p = m + a * d + b * half * n
                    xs.append(abs(float(p[0])))
                    ys.append(float(p[1]))
        x = max(xs)
        return -x, x, min(ys), max(ys)

    def sleeve_hw(self, a: np.ndarray) -> np.ndarray:
        frac = clamp(a * F32(1.0 / self.sleeve_length), 0.0, 1.0)
        return F32(self.sleeve_hw0) + F32(self.sleeve_hw1 - self.sleeve_hw0) * frac

    def torso_to_plane(self, t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return s * self.flat_hw(t), t * F32(self.length)

    def sleeve_to_plane(self, a: np.ndarray, b: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray]:
        """Plane point of sleeve coordinates (a in design units along the flat sleeve, b in [-1, 1])."""
        m, d, n = self.sleeve_frame()
        off = b * self.sleeve_hw(a)
        x = F32(m[0]) + a * F32(d[0]) + off * F32(n[0])
        y = F32(m[1]) + a * F32(d[1]) + off * F32(n[1])
        return x * F32(side), y

    # -- fabric -----------------------------------------------------------------------------------------------------
    def albedo(self, x: np.ndarray, y: np.ndarray, footprint: float) -> np.ndarray:
        """Fabric colour (n×3 float32 in [0, 1]) at plane points; ``footprint`` = plane units per pixel (for AA)."""
        x = np.asarray(x, F32).ravel()
        y = np.asarray(y, F32).ravel()
        base = self.base[None, :]
        second = self.second[None, :]
        aa = F32(max(footprint, 1e-3))
        if self.pattern == "solid":
            out = np.broadcast_to(base, (x.size, 3)).copy()
        elif self.pattern == "stripes":
            a = _stripe(x, y, self.pattern_angle, self.pattern_period, self.pattern_duty, self.pattern_phase[0], aa)
            out = base + (second - base) * a[:, None]
        elif self.pattern == "checks":
            a1 = _stripe(x, y, self.pattern_angle, self.pattern_period, 0.5, self.pattern_phase[0], aa)
            a2 = _stripe(
                x, y, self.pattern_angle + math.pi / 2, self.pattern_period, 0.5, self.pattern_phase[1], aa
            )
            out = base + (second - base) * (F32(0.5) * (a1 + a2))[:, None]
        else:  # dots
            g = F32(self.pattern_period)
            cy = y * F32(1.0 / g) + F32(self.pattern_phase[1])
            row = np.floor(cy)
            cx = x * F32(1.0 / g) + F32(self.pattern_phase[0])
            if self.dots_staggered:
                cx = cx + F32(0.5) * (row % F32(2.0))
            fx = cx - np.floor(cx) - F32(0.5)
            fy = cy - row - F32(0.5)
            dist = np.sqrt(fx * fx + fy * fy) * g
            a = clamp((F32(self.pattern_duty) * g - dist) / aa + F32(0.5), 0.0, 1.0)
            out = base + (second - base) * a[:, None]
        if self.logo is not None:
            _apply_logo(out, x, y, self.logo, aa)
        return out.astype(F32, copy=False)

    def rib_shade(self, t: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Multiplicative shade of the collar and hem rib bands (1 elsewhere), canonical coordinates."""
        shade = np.ones_like(t)
        if self.rib <= 0:
            return shade
        band = F32(self.rib / self.length)
        near_neck = (t - self.front_neck(s) < band) & (np.abs(s) < F32(self.neck_width * 1.05))
        near_hem = self.hem(s) - t < band
        shade[near_neck | near_hem] = F32(0.9)
        return shade


def _stripe(
    x: np.ndarray, y: np.ndarray, angle: float, period: float, duty: float, phase: float, aa: np.float32
) -> np.ndarray:
    """Anti-aliased stripe indicator in [0, 1] (stripes of width duty·period across direction ``angle``)."""
    p = (x * F32(math.sin(angle)) + y * F32(math.cos(angle))) * F32(1.0 / period) + F32(phase)
    f = p - np.floor(p)
    dist_to_edge = (F32(duty * 0.5) - np.abs(f - F32(0.5))) * F32(period)
    return clamp(dist_to_edge / aa + F32(0.5), 0.0, 1.0)


def _apply_logo(out: np.ndarray, x: np.ndarray, y: np.ndarray, logo: Logo, aa: np.float32) -> None:
    lx = (x - F32(logo.cx)) * F32(1.0 / logo.hw)
    ly = (y - F32(logo.cy)) * F32(1.0 / logo.hh)
    near = (np.abs(lx) < 1.3) & (np.abs(ly) < 1.3)
    if not near.any():
        return
    lx, ly = lx[near], ly[near]
    scale = F32(min(logo.hw, logo.hh))
    if logo.shape == "rect":
        sd = (F32(1.0) - np.maximum(np.abs(lx), np.abs(ly))) * scale
    else:
        sd = (F32(1.0) - np.sqrt(lx * lx + ly * ly)) * scale
    a = clamp(sd / aa + F32(0.5), 0.0, 1.0)
    sub = out[near]
    sub += (logo.color[None, :] - sub) * a[:, None]
    if logo.glyph != "none":
        if logo.glyph == "bar":
            gsd = np.minimum(F32(0.55) - np.abs(lx), F32(0.16) - np.abs(ly)) * scale
        elif logo.glyph == "ring":
            r = np.sqrt(lx * lx + ly * ly)
            gsd = (F32(0.12) - np.abs(r - F32(0.45))) * scale
        else:  # diamond
            gsd = (F32(0.5) - (np.abs(lx) + np.abs(ly))) * scale
        g = clamp(gsd / aa + F32(0.5), 0.0, 1.0)
        sub += (logo.glyph_color[None, :] - sub) * g[:, None]
    out[near] = sub


# --- sampling ------------------------------------------------------------------------------------------------------
def _sample_color(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    r = rng.random()
    h = rng.random()
    if r < 0.14:
        return "near_white", hsv(h, rng.uniform(0.0, 0.06), rng.uniform(0.92, 0.99))
    if r < 0.32:
        return "dark", hsv(h, rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.32))
    if r < 0.52:
        return "pastel", hsv(h, rng.uniform(0.15, 0.4), rng.uniform(0.78, 0.95))
    if r < 0.80:
        return "vivid", hsv(h, rng.uniform(0.55, 0.92), rng.uniform(0.5, 0.92))
    return "muted", hsv(h, rng.uniform(0.2, 0.5), rng.uniform(0.35, 0.7))


def _contrast_color(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    lum = float(base @ np.array([0.299, 0.587, 0.114]))
    r = rng.random()
    if r < 0.35:
        return hsv(rng.random(), rng.uniform(0.0, 0.05), rng.uniform(0.93, 0.99)) if lum < 0.75 else hsv(
            rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.4)
        )
    if r < 0.6:
        return hsv(rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.08, 0.25)) if lum > 0.3 else hsv(
            rng.random(), rng.uniform(0.1, 0.4), rng.uniform(0.85, 0.97)
        )
    for _ in range(8):
        c = hsv(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.35, 0.95))
        if np.abs(c - base).sum() > 0.6:
            return c
    return np.clip(1.0 - base, 0.0, 1.0).astype(F32)


def sample_garment(rng: np.random.Generator) -> GarmentSpec:
    """Draw one garment. The order of draws is part of the format: changing it changes every world."""
    kind = str(rng.choice(GARMENT_KINDS, p=[0.45, 0.3, 0.25]))
    if kind == "tank":
        neck = str(rng.choice(("crew", "scoop"), p=[0.35, 0.65]))
    else:
        neck = str(rng.choice(("crew", "v", "scoop"), p=[0.55, 0.25, 0.2]))
    if neck == "crew":
        neck_width, neck_depth = rng.uniform(0.28, 0.36), rng.uniform(0.05, 0.08)
    elif neck == "v":
        neck_width, neck_depth = rng.uniform(0.28, 0.36), rng.uniform(0.13, 0.21)
    else:
        neck_width, neck_depth = rng.uniform(0.36, 0.46), rng.uniform(0.09, 0.15)
    back_neck_depth = min(rng.uniform(0.02, 0.035), neck_depth * 0.6)
    if kind == "tank":
        strap_outer = min(neck_width + rng.uniform(0.16, 0.26), 0.72)
        armhole_depth = rng.uniform(0.2, 0.28)
    else:
        strap_outer, armhole_depth = 1.0, 0.0
    drop = rng.uniform(0.06, 0.085)
    shoulder_round = rng.uniform(0.025, 0.05)
    hem_curve = rng.uniform(-0.03, 0.02)
    rib = rng.uniform(1.6, 2.8) if rng.random() < 0.7 else 0.0

    length = rng.uniform(132.0, 150.0)
    shoulder_hw = rng.uniform(43.0, 49.0) if kind != "tank" else rng.uniform(38.0, 44.0)
    hem_hw = shoulder_hw + rng.uniform(-5.0, 3.0)
    waist_in = rng.uniform(0.0, 4.0)
    if kind == "tee":
        sleeve_angle = math.radians(rng.uniform(30.0, 52.0))
        sleeve_length = rng.uniform(24.0, 36.0)
        sleeve_hw0 = rng.uniform(13.0, 16.0)
        sleeve_hw1 = sleeve_hw0 * rng.uniform(0.8, 0.95)
    elif kind == "long_sleeve":
        sleeve_angle = math.radians(rng.uniform(66.0, 80.0))
        sleeve_length = rng.uniform(84.0, 98.0)
        sleeve_hw0 = rng.uniform(12.0, 14.5)
        sleeve_hw1 = sleeve_hw0 * rng.uniform(0.5, 0.62)
    else:
        sleeve_angle, sleeve_length, sleeve_hw0, sleeve_hw1 = math.radians(45.0), 1.0, 1.0, 1.0

    product_zoom = rng.uniform(0.84, 0.94)  # fraction of the frame the flat garment fills (the tighter side)
    product_jitter = (rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0))
    bg_kind = str(rng.choice(PRODUCT_BACKGROUNDS, p=[0.45, 0.3, 0.25]))
    if bg_kind == "off_white":
        bg_color = hsv(rng.uniform(0.05, 0.17) if rng.random() < 0.7 else rng.random(), rng.uniform(0.03, 0.1),
                       rng.uniform(0.9, 0.97))
    else:
        bg_color = hsv(rng.random(), rng.uniform(0.0, 0.015), rng.uniform(0.965, 1.0))
    shadow_offset = (rng.uniform(2.0, 6.0), rng.uniform(3.0, 8.0))
    shadow_strength = rng.uniform(0.12, 0.28) if bg_kind == "shadow" else 0.0
    folds = tuple(
        (rng.uniform(0.0, math.pi), rng.uniform(-40.0, 40.0), rng.uniform(3.0, 9.0), rng.uniform(0.03, 0.08))
        for _ in range(int(rng.integers(1, 4)))
    )

    looseness = rng.uniform(0.03, 0.13)
    hem_level = rng.uniform(1.0, 1.1)
    flare = rng.uniform(0.0, 6.0)
    sleeve_cover = rng.uniform(0.38, 0.72) if kind == "tee" else rng.uniform(0.9, 0.96)
    sleeve_looseness = rng.uniform(0.03, 0.13)

    color_class, base = _sample_color(rng)
    second = _contrast_color(rng, base)
    if color_class == "near_white" and rng.random() < 0.6:
        pattern = "solid"
    else:
        pattern = str(rng.choice(PATTERNS, p=[0.3, 0.34, 0.17, 0.19]))
    r = rng.random()
    if pattern == "stripes":
        pattern_angle = 0.0 if r < 0.45 else (math.pi / 2 if r < 0.65 else rng.uniform(-1.1, 1.1))
        pattern_period = rng.uniform(7.0, 20.0)
    elif pattern == "checks":
        pattern_angle = 0.0 if r < 0.8 else math.pi / 4
        pattern_period = rng.uniform(10.0, 22.0)
    else:
        pattern_angle = 0.0
        pattern_period = rng.uniform(9.0, 17.0)
    pattern_duty = rng.uniform(0.28, 0.6) if pattern != "dots" else rng.uniform(0.16, 0.3)
    pattern_phase = (rng.random(), rng.random())
    dots_staggered = bool(rng.random() < 0.5)

    logo = None
    if rng.random() < (0.35 if pattern != "checks" else 0.15):
        chest = rng.random() < 0.6
        if chest:
            cx, cy = rng.uniform(-3.0, 3.0), length * rng.uniform(0.26, 0.36)
            hw, hh = rng.uniform(11.0, 18.0), rng.uniform(7.0, 13.0)
        else:
            cx, cy = shoulder_hw * rng.uniform(0.35, 0.5), length * rng.uniform(0.18, 0.24)
            hw, hh = rng.uniform(5.0, 8.0), rng.uniform(4.0, 7.0)
        logo = Logo(
            shape=str(rng.choice(("rect", "ellipse"))),
            cx=cx,
            cy=cy,
            hw=hw,
            hh=hh,
            color=_contrast_color(rng, base),
            glyph=str(rng.choice(("bar", "ring", "diamond", "none"))),
            glyph_color=mix(base, hsv(0, 0, 1), 0.3),
        )

    spec = GarmentSpec(
        kind=kind,
        neck=neck,
        drop=drop,
        shoulder_round=shoulder_round,
        neck_width=neck_width,
        neck_depth=neck_depth,
        back_neck_depth=back_neck_depth,
        strap_outer=strap_outer,
        armhole_depth=armhole_depth,
        hem_curve=hem_curve,
        rib=rib,
        length=length,
        shoulder_hw=shoulder_hw,
        hem_hw=hem_hw,
        waist_in=waist_in,
        sleeve_angle=sleeve_angle,
        sleeve_length=sleeve_length,
        sleeve_hw0=sleeve_hw0,
        sleeve_hw1=sleeve_hw1,
        background=bg_kind,
        bg_color=bg_color,
        shadow_offset=shadow_offset,
        shadow_strength=shadow_strength,
        folds=folds,
        looseness=looseness,
        hem_level=hem_level,
        flare=flare,
        sleeve_cover=sleeve_cover,
        sleeve_looseness=sleeve_looseness,
        color_class=color_class,
        base=base,
        second=second,
        pattern=pattern,
        pattern_angle=pattern_angle,
        pattern_period=pattern_period,
        pattern_duty=pattern_duty,
        pattern_phase=pattern_phase,
        dots_staggered=dots_staggered,
        logo=logo,
        product_scale=1.0,
        product_dx=0.0,
        product_top=0.0,
    )
    # Frame the flat garment like a catalog photo: centred, filling most of the 256×192 design canvas.
    x0, x1, y0, y1 = spec.flat_bounds()
    scale = product_zoom * min(DESIGN_W / (2.0 * max(abs(x0), abs(x1))), DESIGN_H / (y1 - y0))
    free_x = DESIGN_W / 2.0 - scale * max(abs(x0), abs(x1))
    free_y = DESIGN_H - scale * (y1 - y0)
    return dataclasses.replace(
        spec,
        product_scale=scale,
        product_dx=0.8 * free_x * product_jitter[0],
        product_top=free_y / 2.0 * (1.0 + 0.6 * product_jitter[1]) - scale * y0,
    )


# --- product photo -------------------------------------------------------------------------------------------------
def plane_to_product_px(spec: GarmentSpec, layout: Layout, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pixel coordinates in the product photo of plane points."""
    k = F32(layout.unit * spec.product_scale)
    px = F32(layout.ox + (DESIGN_W / 2 + spec.product_dx) * layout.unit) + x * k
    py = F32(layout.oy + spec.product_top * layout.unit) + y * k
    return px, py


def garment_plane_sd(spec: GarmentSpec, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Signed distances (plane units) of the flat garment's parts at plane points, plus canonical coordinates."""
    t = y * F32(1.0 / spec.length)
    s = x / np.maximum(spec.flat_hw(t), F32(1e-3))
    hw = spec.flat_hw(t)
    sd_torso = np.minimum(
        np.minimum((t - spec.top_back(s)) * F32(spec.length), (spec.hem(s) - t) * F32(spec.length)),
        (F32(1.0) - np.abs(s)) * hw,
    )
    out = {"torso": sd_torso, "t": t, "s": s}
    sd = sd_torso
    if spec.has_sleeves:
        m, d, n = spec.sleeve_frame()
        for name, side in (("sleeve_r", 1.0), ("sleeve_l", -1.0)):
            rx = x * F32(side) - F32(m[0])
            ry = y - F32(m[1])
            a = rx * F32(d[0]) + ry * F32(d[1])
            bb = rx * F32(n[0]) + ry * F32(n[1])
            sd_s = np.minimum(np.minimum(a, F32(spec.sleeve_length) - a), spec.sleeve_hw(a) - np.abs(bb))
            out[name] = sd_s
            out[name + "_a"] = a
            sd = np.maximum(sd, sd_s)
    out["sd"] = sd
    return out


def render_product(spec: GarmentSpec, layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The product photo (H×W×3 uint8) and its exact mask (H×W bool)."""
    from scipy import ndimage

    h, w = layout.height, layout.width
    k = layout.unit * spec.product_scale
    xs = (np.arange(w, dtype=F32)[None, :] - F32(layout.ox + (DESIGN_W / 2 + spec.product_dx) * layout.unit)) / F32(k)
    ys = (np.arange(h, dtype=F32)[:, None] - F32(layout.oy + spec.product_top * layout.unit)) / F32(k)
    x = np.broadcast_to(xs, (h, w))
    y = np.broadcast_to(ys, (h, w))
    parts = garment_plane_sd(spec, x, y)
    sd_px = parts["sd"] * F32(k)
    mask = sd_px >= 0
    cover = sd_px > -0.5

    bg = np.empty((h, w, 3), F32)
    grad = F32(1.0) - F32(0.025) * np.linspace(0.0, 1.0, h, dtype=F32)[:, None]
    bg[:] = spec.bg_color[None, None, :] * grad[:, :, None]
    if spec.shadow_strength > 0:
        dx = int(round(spec.shadow_offset[0] * layout.unit))
        dy = int(round(spec.shadow_offset[1] * layout.unit))
        shifted = np.zeros((h, w), F32)
        shifted[max(dy, 0):, max(dx, 0):] = mask[: h - max(dy, 0), : w - max(dx, 0)]
        blur = ndimage.gaussian_filter(shifted, sigma=max(3.5 * layout.unit, 0.5), mode="constant")
        bg *= (F32(1.0) - F32(spec.shadow_strength) * blur)[:, :, None]

    xc, yc = x[cover], y[cover]
    col = spec.albedo(xc, yc, footprint=1.0 / k)
    t_c, s_c = parts["t"][cover], parts["s"][cover]
    shade = np.full(xc.shape, F32(0.97))
    for angle, offset, width, depth in spec.folds:
        p = xc * F32(math.cos(angle)) + (yc - F32(spec.length / 2)) * F32(math.sin(angle)) - F32(offset)
        shade -= F32(depth) * np.exp(-(p / F32(width)) ** 2)
        shade += F32(depth * 0.5) * np.exp(-((p - F32(width)) / F32(width)) ** 2)
    shade *= F32(1.0) - F32(0.12) * np.exp(-np.maximum(parts["sd"][cover], F32(0.0)) / F32(2.5))
    in_torso = parts["torso"][cover] >= 0
    in_sleeve = np.zeros_like(in_torso)
    if spec.has_sleeves:
        for name in ("sleeve_r", "sleeve_l"):
            sl = parts[name][cover] >= 0
            in_sleeve |= sl
            seam = sl & (parts[name + "_a"][cover] < F32(1.0))
            shade[seam] *= F32(0.86)
    inside_back = in_torso & ~in_sleeve & (t_c < spec.top_front(s_c))
    shade[inside_back] *= F32(0.72)
    rib = spec.rib_shade(t_c, s_c)
    rib[inside_back] = F32(1.0)
    shade *= rib
    col *= shade[:, None]

    alpha = clamp(sd_px[cover] + F32(0.5), 0.0, 1.0)[:, None]
    under = bg[cover]
    bg[cover] = under + alpha * (col - under)
    noise = rng.standard_normal((h, w, 1), dtype=F32) * F32(0.006)
    image = np.clip((bg + noise) * F32(255.0) + F32(0.5), 0, 255).astype(np.uint8)
    return image, mask
