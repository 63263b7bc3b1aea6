"""Models (people) of the synthetic world: body sampling, the person render and its labels.

Bodies are built in a **body frame** measured in design units (1 unit = 1 pixel at 256×192 and scale 1): origin at
the neck base, +y down the torso axis, +x towards image-right (the person's left side; people face the camera).
A per-model similarity transform (scale, tilt about the pelvis, shift) plus a gentle spine bend maps the frame to
pixels. Every part is a signed-distance shape in that frame, painted back to front, and
the parsing / DensePose maps are written by the same paint calls as the colours, so they agree pixel for pixel
(see ``PersonRenderer.render`` for the painting order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pfafn.synthetic import labels as L
from pfafn.synthetic._garment import DESIGN_W, GarmentSpec, Layout, plane_to_product_px
from pfafn.synthetic._raster import F32, Box, Canvas, SmoothProfile, box_around, capsule, clamp, ellipse_sd, hsv, mix

HAIR_STYLES = ("short", "bob", "long", "long_front", "bun")
ARM_POSES = ("down", "relaxed", "front", "hip")

_SKIN_PALETTE = np.array(
    [
        (0.97, 0.82, 0.71),
        (0.93, 0.74, 0.60),
        (0.86, 0.65, 0.51),
        (0.77, 0.56, 0.41),
        (0.64, 0.44, 0.31),
        (0.49, 0.32, 0.22),
        (0.35, 0.22, 0.15),
    ],
    dtype=np.float64,
)
_HAIR_COLORS = (
    ((0.07, 0.06, 0.06), 0.32),
    ((0.20, 0.13, 0.08), 0.26),
    ((0.38, 0.25, 0.15), 0.16),
    ((0.76, 0.62, 0.40), 0.13),
    ((0.52, 0.22, 0.11), 0.07),
    ((0.60, 0.60, 0.58), 0.06),
)


@dataclass(frozen=True)
class ArmSpec:
    side: float  # -1: image-left arm (the person's right), +1: image-right arm (the person's left)
    pose: str
    upper_angle: float  # radians from straight down, positive = away from the body
    fore_angle: float  # absolute direction of the forearm, same convention (negative = across the body)
    upper_len: float
    fore_len: float
    r_shoulder: float
    r_elbow: float
    r_wrist: float
    hand_len: float
    hand_w: float


@dataclass(frozen=True)
class BodySpec:
    """Everything that defines one model (sampled once from the world seed and the model index)."""

    scale: float
    dx: float
    dy: float
    tilt: float
    bend: float
    head_tilt: float
    torso_length: float
    shoulder_hw: float
    chest_hw: float
    waist_hw: float
    hip_hw: float
    neck_hw: float
    neck_extra: float
    face_rx: float
    face_ry: float
    arms: tuple[ArmSpec, ArmSpec]
    leg_angle: tuple[float, float]
    thigh_r: float
    knee_r: float
    ankle_r: float
    lower: str  # "pants" | "skirt"
    lower_color: np.ndarray
    lower_looseness: float
    skirt_length: float
    skirt_flare: float
    skin: np.ndarray
    lip: np.ndarray
    hair_color: np.ndarray
    hair_style: str
    hair_length: float
    hair_part: float
    light: float  # horizontal light direction component in [-1, 1]
    bg_top: np.ndarray
    bg_bottom: np.ndarray
    noise_sigma: float
    kp_conf: tuple[float, ...]
    ear_visible: tuple[bool, bool]


def _sample_arm(rng: np.random.Generator, side: float, pose: str) -> ArmSpec:
    if pose == "down":
        ua = rng.uniform(7.0, 16.0)
        fa = ua + rng.uniform(-4.0, 8.0)
    elif pose == "relaxed":
        ua = rng.uniform(14.0, 30.0)
        fa = ua + rng.uniform(0.0, 25.0)
    elif pose == "front":
        ua = rng.uniform(2.0, 10.0)
        fa = -rng.uniform(70.0, 112.0)
    else:  # hip
        ua = rng.uniform(30.0, 42.0)
        fa = -rng.uniform(20.0, 42.0)
    r_shoulder = rng.uniform(8.5, 10.5)
    return ArmSpec(
        side=side,
        pose=pose,
        upper_angle=math.radians(ua),
        fore_angle=math.radians(fa),
        upper_len=rng.uniform(48.0, 56.0),
        fore_len=rng.uniform(43.0, 50.0),
        r_shoulder=r_shoulder,
        r_elbow=r_shoulder * rng.uniform(0.72, 0.8),
        r_wrist=rng.uniform(4.6, 5.6),
        hand_len=rng.uniform(15.0, 18.0),
        hand_w=rng.uniform(4.6, 5.6),
    )


def sample_body(rng: np.random.Generator) -> BodySpec:
    """Draw one model. The order of draws is part of the format: changing it changes every world."""
    g = rng.random()  # 0: narrow shoulders / wide hips … 1: broad shoulders / narrow hips
    shoulder_hw = 34.0 + 8.0 * g + rng.uniform(-1.5, 1.5)
    chest_hw = shoulder_hw * rng.uniform(0.86, 0.93)
    waist_hw = shoulder_hw * (0.66 + 0.12 * g) + rng.uniform(-1.5, 2.5)
    hip_hw = shoulder_hw * (0.98 - 0.16 * g) + rng.uniform(-1.0, 2.0)
    first = str(rng.choice(ARM_POSES, p=[0.4, 0.3, 0.17, 0.13]))
    second = first if rng.random() < 0.5 else str(rng.choice(ARM_POSES, p=[0.4, 0.3, 0.17, 0.13]))
    poses = (first, second) if rng.random() < 0.5 else (second, first)
    arms = (_sample_arm(rng, -1.0, poses[0]), _sample_arm(rng, 1.0, poses[1]))

    tone = rng.uniform(0.0, len(_SKIN_PALETTE) - 1.0)
    k = min(int(tone), len(_SKIN_PALETTE) - 2)
    skin = _SKIN_PALETTE[k] + (_SKIN_PALETTE[k + 1] - _SKIN_PALETTE[k]) * (tone - k)
    skin = np.clip(skin * rng.uniform(0.96, 1.03) + rng.uniform(-0.015, 0.015, 3), 0, 1).astype(F32)
    lip = mix(skin, np.array([0.62, 0.2, 0.22]), rng.uniform(0.3, 0.55))
    weights = np.array([w for _, w in _HAIR_COLORS])
    hair_color = np.asarray(_HAIR_COLORS[int(rng.choice(len(_HAIR_COLORS), p=weights / weights.sum()))][0], F32)
    hair_color = np.clip(hair_color * rng.uniform(0.85, 1.15), 0, 1).astype(F32)
    hair_style = str(rng.choice(HAIR_STYLES, p=[0.3, 0.18, 0.24, 0.18, 0.1]))

    lower = "skirt" if rng.random() < 0.25 else "pants"
    r = rng.random()
    if r < 0.4:
        lower_color = hsv(rng.uniform(0.56, 0.62), rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.6))  # denim
    elif r < 0.62:
        lower_color = hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.06, 0.2))  # black
    elif r < 0.78:
        lower_color = hsv(rng.uniform(0.08, 0.13), rng.uniform(0.2, 0.45), rng.uniform(0.5, 0.75))  # khaki
    elif r < 0.9:
        lower_color = hsv(rng.random(), rng.uniform(0.0, 0.08), rng.uniform(0.35, 0.88))  # grey / white
    else:
        lower_color = hsv(rng.random(), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.8))

    bg_hue = rng.random()
    bg_sat = rng.uniform(0.0, 0.1) if rng.random() < 0.8 else rng.uniform(0.1, 0.22)
    bg_val = rng.uniform(0.8, 0.97)
    bg_top = hsv(bg_hue, bg_sat, bg_val)
    bg_bottom = hsv(bg_hue + rng.uniform(-0.03, 0.03), bg_sat * rng.uniform(0.8, 1.2), bg_val - rng.uniform(0.0, 0.1))

    kp_conf = tuple(float(c) for c in rng.uniform(0.55, 0.96, L.NUM_KEYPOINTS))
    covered = hair_style in ("bob", "long", "long_front")
    ear_visible = (not covered or rng.random() < 0.5, not covered or rng.random() < 0.5)

    return BodySpec(
        scale=rng.uniform(0.96, 1.12),
        dx=rng.uniform(-10.0, 10.0),
        dy=rng.uniform(-4.0, 6.0),
        tilt=math.radians(rng.uniform(-5.0, 5.0)),
        bend=rng.uniform(-4.0, 4.0),
        head_tilt=math.radians(rng.uniform(-7.0, 7.0)),
        torso_length=rng.uniform(100.0, 114.0),
        shoulder_hw=shoulder_hw,
        chest_hw=chest_hw,
        waist_hw=waist_hw,
        hip_hw=hip_hw,
        neck_hw=rng.uniform(8.0, 9.8),
        neck_extra=rng.uniform(-2.0, 1.5),
        face_rx=rng.uniform(14.0, 16.5),
        face_ry=rng.uniform(18.0, 20.5),
        arms=arms,
        leg_angle=(math.radians(rng.uniform(-1.0, 7.0)), math.radians(rng.uniform(-1.0, 7.0))),
        thigh_r=hip_hw * rng.uniform(0.5, 0.56),
        knee_r=rng.uniform(9.5, 11.5),
        ankle_r=rng.uniform(6.0, 7.0),
        lower=lower,
        lower_color=lower_color,
        lower_looseness=rng.uniform(1.0, 4.0),
        skirt_length=rng.uniform(40.0, 78.0),
        skirt_flare=rng.uniform(4.0, 20.0),
        skin=skin,
        lip=lip,
        hair_color=hair_color,
        hair_style=hair_style,
        hair_length=rng.uniform(18.0, 50.0),
        hair_part=rng.uniform(-0.5, 0.5),
        light=rng.uniform(-0.45, 0.45),
        bg_top=bg_top,
        bg_bottom=bg_bottom,
        noise_sigma=rng.uniform(0.004, 0.012),
        kp_conf=kp_conf,
        ear_visible=ear_visible,
    )


class _Frame:
    """Body frame ↔ pixel transform of one model at one image size."""

    def __init__(self, body: BodySpec, layout: Layout) -> None:
        u = layout.unit
        self.layout = layout
        self.s_px = body.scale * u
        self.lt = body.torso_length
        self.bend = body.bend
        neck_y = 68.0 + body.dy
        self.p0x = layout.ox + (DESIGN_W / 2 + body.dx) * u
        self.p0y = layout.oy + (neck_y + body.scale * body.torso_length) * u
        self.c = math.cos(body.tilt)
        self.s = math.sin(body.tilt)
        # head frame: rotation about the neck pivot
        self.pivot = (0.0, -12.0)
        self.hc = math.cos(body.head_tilt)
        self.hs = math.sin(body.head_tilt)

    def to_px(self, bx, by):
        bx = np.asarray(bx, np.float64)
        by = np.asarray(by, np.float64)
        rel = (by - self.lt) / self.lt
        x = bx + self.bend * rel * rel
        y = by - self.lt
        return self.p0x + self.s_px * (self.c * x - self.s * y), self.p0y + self.s_px * (self.s * x + self.c * y)

    def from_px(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        dx = box.xs - F32(self.p0x)
        dy = box.ys - F32(self.p0y)
        inv = F32(1.0 / self.s_px)
        x = (dx * F32(self.c) + dy * F32(self.s)) * inv
        y = (dy * F32(self.c) - dx * F32(self.s)) * inv
        by = y + F32(self.lt)
        rel = y * F32(1.0 / self.lt)
        bx = x - F32(self.bend) * rel * rel
        return bx, by

    def head_to_body(self, hx, hy):
        px, py = self.pivot
        hx = np.asarray(hx, np.float64) - px
        hy = np.asarray(hy, np.float64) - py
        return px + self.hc * hx - self.hs * hy, py + self.hs * hx + self.hc * hy

    def body_to_head(self, bx: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        px, py = self.pivot
        x = bx - F32(px)
        y = by - F32(py)
        return F32(px) + F32(self.hc) * x + F32(self.hs) * y, F32(py) - F32(self.hs) * x + F32(self.hc) * y

    def box(self, points_body, margin_units: float, head: bool = False) -> Box | None:
        pts = np.asarray(points_body, np.float64).reshape(-1, 2)
        if head:
            bx, by = self.head_to_body(pts[:, 0], pts[:, 1])
        else:
            bx, by = pts[:, 0], pts[:, 1]
        x, y = self.to_px(bx, by)
        return box_around(np.stack([x, y], 1), margin_units * self.s_px + 2.0, self.layout.height, self.layout.width)


@dataclass
class _ArmGeometry:
    spec: ArmSpec
    shoulder: tuple[float, float]
    elbow: tuple[float, float]
    wrist: tuple[float, float]
    hand_center: tuple[float, float]
    fore_dir: tuple[float, float]


def _arm_geometry(body: BodySpec, arm: ArmSpec) -> _ArmGeometry:
    sd = arm.side
    j = (sd * (body.shoulder_hw - arm.r_shoulder), 16.0)
    e = (j[0] + sd * arm.upper_len * math.sin(arm.upper_angle), j[1] + arm.upper_len * math.cos(arm.upper_angle))
    fd = (sd * math.sin(arm.fore_angle), math.cos(arm.fore_angle))
    w = (e[0] + arm.fore_len * fd[0], e[1] + arm.fore_len * fd[1])
    hc = (w[0] + fd[0] * arm.hand_len * 0.42, w[1] + fd[1] * arm.hand_len * 0.42)
    return _ArmGeometry(arm, j, e, w, hc, fd)


@dataclass
class _Geometry:
    frame: _Frame
    body_hw: SmoothProfile
    face_c: tuple[float, float]  # head frame
    arms: tuple[_ArmGeometry, _ArmGeometry]
    hips: tuple[tuple[float, float], tuple[float, float]]
    knees: tuple[tuple[float, float], tuple[float, float]]
    ankles: tuple[tuple[float, float], tuple[float, float]]


def _geometry(body: BodySpec, layout: Layout) -> _Geometry:
    lt = body.torso_length
    profile = SmoothProfile(
        [-14.0, 10.0, 32.0, 0.6 * lt, lt - 4.0, lt + 24.0, lt + 60.0],
        [
            body.shoulder_hw * 0.9,
            body.shoulder_hw,
            body.chest_hw,
            body.waist_hw,
            body.hip_hw,
            body.hip_hw * 1.02,
            body.hip_hw * 1.02,
        ],
    )
    face_c = (0.0, -(body.face_ry + 11.0 + body.neck_extra))
    hips, knees, ankles = [], [], []
    for side, angle in zip((-1.0, 1.0), body.leg_angle):
        hip = (side * body.hip_hw * 0.48, lt - 4.0)
        knee = (hip[0] + side * 96.0 * math.sin(angle), hip[1] + 96.0 * math.cos(angle))
        ankle = (knee[0] + side * 92.0 * math.sin(angle * 0.3), knee[1] + 92.0 * math.cos(angle * 0.3))
        hips.append(hip)
        knees.append(knee)
        ankles.append(ankle)
    return _Geometry(
        frame=_Frame(body, layout),
        body_hw=profile,
        face_c=face_c,
        arms=(_arm_geometry(body, body.arms[0]), _arm_geometry(body, body.arms[1])),
        hips=(hips[0], hips[1]),
        knees=(knees[0], knees[1]),
        ankles=(ankles[0], ankles[1]),
    )


def _cyl_shade(b: np.ndarray, light_x: float, normal_x: float = 1.0, ambient: float = 0.62) -> np.ndarray:
    """Lambert shade of a cylinder at normalised across-coordinate b ∈ [-1, 1] (normal_x: image-x of +b)."""
    b = clamp(b, -1.0, 1.0)
    lz = math.sqrt(max(1.0 - light_x * light_x, 0.0))
    lam = F32(lz) * np.sqrt(F32(1.0) - b * b) + F32(light_x * normal_x) * b
    return F32(ambient) + F32(1.0 - ambient) * clamp(lam, 0.0, 1.0)


@dataclass(frozen=True)
class Wobble:
    """Smooth pair-specific drape of a worn garment (canonical-coordinate perturbation)."""

    amp_s: float
    freq_s: float
    phase_s: float
    amp_t: float
    freq_t: float
    phase_t: float
    folds: tuple[tuple[float, float, float, float], ...]

    @staticmethod
    def sample(rng: np.random.Generator) -> Wobble:
        return Wobble(
            amp_s=rng.uniform(0.01, 0.035),
            freq_s=rng.uniform(0.6, 1.6),
            phase_s=rng.random(),
            amp_t=rng.uniform(0.003, 0.009),
            freq_t=rng.uniform(0.8, 2.2),
            phase_t=rng.random(),
            folds=tuple(
                (rng.uniform(-0.9, 0.9), rng.uniform(0.35, 0.95), rng.uniform(0.03, 0.07), rng.uniform(0.04, 0.1))
                for _ in range(int(rng.integers(1, 4)))
            ),
        )

    def apply(self, t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        two_pi = F32(2 * math.pi)
        env = clamp(t, 0.0, 1.2)
        s2 = s + F32(self.amp_s) * np.sin(two_pi * (F32(self.freq_s) * t + F32(self.phase_s))) * env
        t2 = t + F32(self.amp_t) * np.sin(two_pi * (F32(self.freq_t) * s + F32(self.phase_t))) * env
        return t2, s2


class PersonRenderer:
    """Renders one (model, garment) pair; create, call ``render()``, read the arrays."""

    def __init__(
        self,
        body: BodySpec,
        garment: GarmentSpec,
        layout: Layout,
        wobble: Wobble,
        noise_rng: np.random.Generator,
    ) -> None:
        self.body = body
        self.garment = garment
        self.layout = layout
        self.wobble = wobble
        self.noise_rng = noise_rng
        self.geo = _geometry(body, layout)
        self.frame = self.geo.frame

    # -- helpers ------------------------------------------------------------------------------------------------
    def _grid_write(self, box: Box, inside: np.ndarray, x_plane: np.ndarray, y_plane: np.ndarray) -> None:
        """Record the product-photo source of freshly painted garment pixels (normalised, align_corners=True)."""
        px, py = plane_to_product_px(self.garment, self.layout, x_plane, y_plane)
        h, w = self.layout.height, self.layout.width
        view = self.canvas.garment_grid[box.slices]
        view[..., 0][inside] = px * F32(2.0 / max(w - 1, 1)) - F32(1.0)
        view[..., 1][inside] = py * F32(2.0 / max(h - 1, 1)) - F32(1.0)

    # -- render -------------------------------------------------------------------------------------------------
    def render(self) -> dict[str, np.ndarray]:
        """Paint the person back to front and return the ``PersonRender`` fields.

        Order: background → long hair behind the shoulders → legs and lower garment → torso skin → neck →
        garment body panel → per arm: skin (upper arm, forearm, hand) then its sleeve → head (ears, face,
        features, hair) → long hair falling over the garment. Arms are painted after the garment body, so
        forearms across the body occlude it; sleeves after the arm skin they cover.
        """
        lay = self.layout
        b = self.body
        rows = np.linspace(0.0, 1.0, lay.height, dtype=F32)[:, None, None]
        background = b.bg_top[None, None, :] + (b.bg_bottom - b.bg_top)[None, None, :] * rows
        self.canvas = Canvas(np.broadcast_to(background, (lay.height, lay.width, 3)))
        if b.hair_style in ("long", "long_front"):
            self._hair_back()
        self._lower_body()
        self._torso_skin()
        self._neck()
        self._garment_torso()
        for arm in self.geo.arms:
            self._arm_skin(arm)
            if self.garment.has_sleeves:
                self._sleeve(arm)
        self._head()
        if b.hair_style == "long_front":
            self._hair_strands()
        cv = self.canvas
        # luminance sensor noise (uniform with the standard deviation noise_sigma; cheaper than normal)
        noise = self.noise_rng.random((lay.height, lay.width, 1), dtype=F32)
        noise -= F32(0.5)
        noise *= F32(b.noise_sigma * math.sqrt(12.0) * 255.0)
        rgb = cv.rgb * F32(255.0)
        rgb += noise
        rgb += F32(0.5)
        image = clamp(rgb, 0.0, 255.0).astype(np.uint8)
        garment_mask = cv.parsing == L.UPPER_CLOTHES
        grid = cv.garment_grid
        grid[~garment_mask] = F32(-2.0)
        return {
            "image": image,
            "parsing": cv.parsing,
            "densepose": cv.densepose,
            "keypoints": self.keypoints(),
            "garment_mask": garment_mask,
            "garment_grid": grid,
        }

    # -- parts --------------------------------------------------------------------------------------------------
    def _hair_back(self) -> None:
        b, fr = self.body, self.frame
        fc = self.geo.face_c
        half = b.face_rx + 5.0
        bottom = fc[1] + b.face_ry + b.hair_length
        box = fr.box([(-half, fc[1] - b.face_ry - 6), (half, fc[1] - b.face_ry - 6), (-half, bottom), (half, bottom)],
                     4.0, head=True)
        if box is None:
            return
        bx, by = fr.from_px(box)
        hx, hy = fr.body_to_head(bx, by)
        corner = F32(6.0)
        sd_rect = np.minimum(F32(half) - np.abs(hx), F32(bottom) - hy)
        # rounded bottom corners
        cx = np.abs(hx) - F32(half - corner)
        cy = hy - F32(bottom - corner)
        rounded = np.where((cx > 0) & (cy > 0), corner - np.sqrt(cx * cx + cy * cy), sd_rect)
        sd = np.minimum(rounded, hy - F32(fc[1] - b.face_ry + 2.0)) * F32(fr.s_px)
        shade = F32(0.72) + F32(0.06) * np.sin(hx * F32(1.3))
        self.canvas.paint(box, sd, b.hair_color, L.HAIR, None, shade=shade)

    def _lower_body(self) -> None:
        b, fr, geo = self.body, self.frame, self.geo
        lt = b.torso_length
        top = lt - 16.0
        # legs (skin under a skirt; the pants legs otherwise)
        pants = b.lower == "pants"
        for k, side in enumerate((-1.0, 1.0)):
            hip, knee, ankle = geo.hips[k], geo.knees[k], geo.ankles[k]
            extra = b.lower_looseness if pants else 0.0
            upper_dp = L.DP_UPPER_LEG_LEFT[1] if side > 0 else L.DP_UPPER_LEG_RIGHT[1]
            lower_dp = L.DP_LOWER_LEG_LEFT[1] if side > 0 else L.DP_LOWER_LEG_RIGHT[1]
            label = L.PANTS if pants else (L.LEFT_LEG if side > 0 else L.RIGHT_LEG)
            color = b.lower_color if pants else b.skin
            for a, c, ra, rc, dp in (
                (knee, ankle, b.knee_r + extra, b.ankle_r + extra, lower_dp),
                (hip, knee, b.thigh_r + extra, b.knee_r + extra, upper_dp),
            ):
                box = fr.box([a, c], max(ra, rc) + 1.0)
                if box is None:
                    continue
                bx, by = fr.from_px(box)
                cap = capsule(bx, by, a, c, ra, rc, normal_sign=side)
                shade = _cyl_shade(cap.across / cap.radius, b.light, -side)
                self.canvas.paint(box, cap.sd * F32(fr.s_px), color, label, dp, shade=shade)
        if pants:
            bottom = lt + 14.0
            box = fr.box([(-b.hip_hw - 6, top), (b.hip_hw + 6, top), (-b.hip_hw - 6, bottom), (b.hip_hw + 6, bottom)],
                         2.0)
            if box is not None:
                bx, by = fr.from_px(box)
                hw = geo.body_hw(by) * F32(1.02) + F32(b.lower_looseness * 0.5)
                sd = np.minimum(np.minimum(hw - np.abs(bx), by - F32(top)), F32(bottom) - by)
                shade = _cyl_shade(bx / hw, b.light)
                self.canvas.paint(box, sd * F32(fr.s_px), b.lower_color, L.PANTS, L.DP_TORSO_FRONT, shade=shade)
        else:
            hem = lt + b.skirt_length
            hw_top = b.hip_hw * 1.03
            hw_hem = hw_top + b.skirt_flare
            box = fr.box([(-hw_hem, top), (hw_hem, top), (-hw_hem, hem + 4), (hw_hem, hem + 4)], 2.0)
            if box is not None:
                bx, by = fr.from_px(box)
                frac = clamp((by - F32(top)) * F32(1.0 / (hem - top)), 0.0, 1.0)
                hw = np.maximum(geo.body_hw(by) * F32(1.03), F32(hw_top) + F32(hw_hem - hw_top) * frac)
                hem_line = F32(hem) + F32(3.0) * (bx / F32(hw_hem)) ** 2
                sd = np.minimum(np.minimum(hw - np.abs(bx), by - F32(top)), hem_line - by)
                dp = np.where(
                    by < F32(lt + 4.0),
                    np.uint8(L.DP_TORSO_FRONT),
                    np.where(bx > 0, np.uint8(L.DP_UPPER_LEG_LEFT[1]), np.uint8(L.DP_UPPER_LEG_RIGHT[1])),
                )
                shade = _cyl_shade(bx / hw, b.light) * (F32(0.96) + F32(0.04) * np.sin(bx * F32(0.35)))
                self.canvas.paint(box, sd * F32(fr.s_px), b.lower_color, L.PANTS, dp, shade=shade)

    def _torso_skin(self) -> None:
        b, fr, geo = self.body, self.frame, self.geo
        lt = b.torso_length
        sh = b.shoulder_hw
        bottom = lt - 8.0
        box = fr.box([(-sh - 2, -4), (sh + 2, -4), (-b.hip_hw - 2, bottom), (b.hip_hw + 2, bottom)], 2.0)
        if box is None:
            return
        bx, by = fr.from_px(box)
        hw = geo.body_hw(by)
        rel = np.abs(bx) * F32(1.0 / sh)
        corner = np.maximum((rel - F32(0.72)) * F32(1.0 / 0.28), F32(0.0))
        top = F32(-1.0) + F32(8.0) * rel * rel + F32(4.0) * corner * corner
        sd = np.minimum(np.minimum(hw - np.abs(bx), by - top), F32(bottom) - by) * F32(fr.s_px)
        near_neck = np.abs(bx) < F32(0.55 * sh)
        label = np.where(near_neck, np.uint8(L.FACE), np.where(bx > 0, np.uint8(L.LEFT_ARM), np.uint8(L.RIGHT_ARM)))
        shade = _cyl_shade(bx / hw, b.light, ambient=0.55)
        self.canvas.paint(box, sd, b.skin, label, L.DP_TORSO_FRONT, shade=shade)

    def _neck(self) -> None:
        b, fr, geo = self.body, self.frame, self.geo
        top = fr.head_to_body(0.0, geo.face_c[1] + 6.0)
        a = (float(top[0]), float(top[1]))
        c = (0.0, 4.0)
        box = fr.box([a, c], b.neck_hw + 1.0)
        if box is None:
            return
        bx, by = fr.from_px(box)
        cap = capsule(bx, by, a, c, b.neck_hw, b.neck_hw * 1.08)
        shade = _cyl_shade(cap.across / cap.radius, b.light, -1.0) * F32(0.86)
        dp = np.where(bx < 0, np.uint8(L.DP_HEAD[0]), np.uint8(L.DP_HEAD[1]))
        self.canvas.paint(box, cap.sd * F32(fr.s_px), b.skin, L.FACE, dp, shade=shade)

    def _garment_torso(self) -> None:
        b, fr, geo, g = self.body, self.frame, self.geo, self.garment
        lt = b.torso_length
        by0 = -1.0
        by_hem = g.hem_level * lt
        span = by_hem - by0
        max_hw = max(b.shoulder_hw, b.hip_hw, b.chest_hw) * (1.0 + g.looseness) * 1.08 + g.flare + 3.0
        box = fr.box([(-max_hw, by0 - 3), (max_hw, by0 - 3), (-max_hw, by_hem + 6), (max_hw, by_hem + 6)], 2.0)
        if box is None:
            return
        bx, by = fr.from_px(box)
        flare = F32(g.flare) * clamp((by - F32(0.55 * lt)) * F32(1.0 / (0.5 * lt)), 0.0, 1.0)
        # ease grows from the shoulders (where the garment rests on the body) to the chest
        ease = F32(g.looseness) * clamp((by + F32(4.0)) * F32(1.0 / 30.0), 0.25, 1.0)
        hwg = geo.body_hw(by) * (F32(1.0) + ease) + flare
        s = bx / hwg
        t = (by - F32(by0)) * F32(1.0 / span)
        t, s = self.wobble.apply(t, s)
        sd = np.minimum(
            np.minimum((t - g.top_front(s)) * F32(span), (g.hem(s) - t) * F32(span)),
            (F32(1.0) - np.abs(s)) * hwg,
        ) * F32(fr.s_px)
        cover = sd > F32(-0.5)
        if not cover.any():
            return
        tc, sc = t[cover], s[cover]
        xp, yp = g.torso_to_plane(tc, sc)
        footprint = 1.15 / fr.s_px
        col = g.albedo(xp, yp, footprint)
        shade = _cyl_shade(sc, b.light, ambient=0.66) * g.rib_shade(tc, sc)
        for cs, ct, width, depth in self.wobble.folds:
            # soft diagonal drape folds, strongest below the chest
            p = (sc - F32(cs) * (tc - F32(ct))) / F32(width * 4)
            shade *= F32(1.0) - F32(depth) * np.exp(-p * p) * clamp(tc * F32(1.5) - F32(0.3), 0.0, 1.0)
        # a slightly darker hem edge
        shade *= F32(1.0) - F32(0.06) * np.exp(-np.maximum(g.hem(sc) - tc, F32(0.0)) * F32(span / 2.0))
        inside = self.canvas.paint(box, sd, col, L.UPPER_CLOTHES, L.DP_TORSO_FRONT, shade=shade, cover=cover)
        self._grid_write_cover(box, cover, inside, xp, yp)

    def _grid_write_cover(self, box: Box, cover: np.ndarray, inside: np.ndarray, xp, yp) -> None:
        sel = inside[cover]
        full = np.zeros_like(inside)
        full[cover] = sel
        self._grid_write(box, full, xp[sel], yp[sel])

    def _arm_skin(self, arm: _ArmGeometry) -> None:
        b, fr = self.body, self.frame
        a = arm.spec
        sd_side = a.side
        label = L.LEFT_ARM if sd_side > 0 else L.RIGHT_ARM
        upper_dp = L.DP_UPPER_ARM_LEFT if sd_side > 0 else L.DP_UPPER_ARM_RIGHT
        lower_dp = L.DP_LOWER_ARM_LEFT if sd_side > 0 else L.DP_LOWER_ARM_RIGHT
        hand_dp = L.DP_LEFT_HAND if sd_side > 0 else L.DP_RIGHT_HAND
        for p, q, rp, rq, dps in (
            (arm.shoulder, arm.elbow, a.r_shoulder, a.r_elbow, upper_dp),
            (arm.elbow, arm.wrist, a.r_elbow * 0.94, a.r_wrist, lower_dp),
        ):
            box = fr.box([p, q], max(rp, rq) + 1.0)
            if box is None:
                continue
            bx, by = fr.from_px(box)
            cap = capsule(bx, by, p, q, rp, rq, normal_sign=sd_side)
            across = cap.across / cap.radius
            ux, uy = q[0] - p[0], q[1] - p[1]
            nx = -sd_side * uy / max(math.hypot(ux, uy), 1e-6)
            shade = _cyl_shade(across, b.light, nx)
            dp = np.where(across > 0, np.uint8(dps[0]), np.uint8(dps[1]))
            self.canvas.paint(box, cap.sd * F32(fr.s_px), b.skin, label, dp, shade=shade)
        hc = arm.hand_center
        box = fr.box([hc], a.hand_len * 0.6 + 1.0)
        if box is not None:
            bx, by = fr.from_px(box)
            angle = math.atan2(arm.fore_dir[1], arm.fore_dir[0])
            sd, u, v = ellipse_sd(bx, by, hc, a.hand_len * 0.55, a.hand_w, angle)
            shade = F32(0.78) + F32(0.16) * clamp(F32(1.0) - v * v, 0.0, 1.0)
            self.canvas.paint(box, sd * F32(fr.s_px), b.skin, label, hand_dp, shade=shade)

    def _sleeve(self, arm: _ArmGeometry) -> None:
        b, fr, g = self.body, self.frame, self.garment
        a = arm.spec
        side = a.side
        k_loose = 1.0 + g.sleeve_looseness
        ru0, ru1 = a.r_shoulder * k_loose + 0.8, a.r_elbow * k_loose + 1.0
        rf0, rf1 = a.r_elbow * 0.94 * k_loose + 1.0, a.r_wrist * k_loose + 1.4
        long = g.kind == "long_sleeve"
        if long:
            a_end = a.upper_len + g.sleeve_cover * a.fore_len
            pts = [arm.shoulder, arm.elbow, arm.wrist]
        else:
            a_end = g.sleeve_cover * a.upper_len
            frac = g.sleeve_cover
            pts = [arm.shoulder, (arm.shoulder[0] + frac * (arm.elbow[0] - arm.shoulder[0]),
                                  arm.shoulder[1] + frac * (arm.elbow[1] - arm.shoulder[1]))]
        box = fr.box(pts, max(ru0, rf0) + 2.0)
        if box is None:
            return
        bx, by = fr.from_px(box)
        up = capsule(bx, by, arm.shoulder, arm.elbow, ru0, ru1, normal_sign=side)
        sd_u = up.sd
        along = up.along
        across = up.across / up.radius
        is_upper_seg = None
        if long:
            fo = capsule(bx, by, arm.elbow, arm.wrist, rf0, rf1, normal_sign=side)
            use_fore = fo.sd > sd_u
            sd_u = np.where(use_fore, fo.sd, sd_u)
            along = np.where(use_fore, F32(a.upper_len) + fo.along, np.minimum(along, F32(a.upper_len)))
            across = np.where(use_fore, fo.across / fo.radius, across)
            is_upper_seg = ~use_fore
        sd = np.minimum(sd_u, F32(a_end) - along) * F32(fr.s_px)
        cover = sd > F32(-0.5)
        if not cover.any():
            return
        ac = along[cover]
        bc = clamp(across[cover], -1.0, 1.0)
        # clamp to the flat sleeve: the shoulder cap (a < 0) shows the seam end of the sleeve
        a_plane = clamp(ac * F32(g.sleeve_length / a_end), 0.0, g.sleeve_length)
        xp, yp = g.sleeve_to_plane(a_plane, bc, side)
        col = g.albedo(xp, yp, 1.15 / fr.s_px)
        # the image-x direction of +across on the upper arm
        ux, uy = arm.elbow[0] - arm.shoulder[0], arm.elbow[1] - arm.shoulder[1]
        nx = -side * uy / max(math.hypot(ux, uy), 1e-6)
        shade = _cyl_shade(bc, b.light, nx, ambient=0.64)
        shade[a_plane < F32(1.0)] *= F32(0.86)  # shoulder seam, as in the product photo
        dps_u = L.DP_UPPER_ARM_LEFT if side > 0 else L.DP_UPPER_ARM_RIGHT
        dps_l = L.DP_LOWER_ARM_LEFT if side > 0 else L.DP_LOWER_ARM_RIGHT
        inner = across > 0
        if is_upper_seg is None:
            dp = np.where(inner, np.uint8(dps_u[0]), np.uint8(dps_u[1]))
        else:
            dp = np.where(
                is_upper_seg,
                np.where(inner, np.uint8(dps_u[0]), np.uint8(dps_u[1])),
                np.where(inner, np.uint8(dps_l[0]), np.uint8(dps_l[1])),
            )
        inside = self.canvas.paint(box, sd, col, L.UPPER_CLOTHES, dp, shade=shade, cover=cover)
        self._grid_write_cover(box, cover, inside, xp, yp)

    def _head(self) -> None:
        b, fr, geo = self.body, self.frame, self.geo
        fc = geo.face_c
        rx, ry = b.face_rx, b.face_ry
        top = fc[1] - ry - 15.0
        box = fr.box([(-rx - 8, top), (rx + 8, top), (-rx - 8, fc[1] + ry + 2), (rx + 8, fc[1] + ry + 2)], 2.0,
                     head=True)
        if box is None:
            return
        bx, by = fr.from_px(box)
        hx, hy = fr.body_to_head(bx, by)
        s_px = F32(fr.s_px)
        dp = np.where(hx < 0, np.uint8(L.DP_HEAD[0]), np.uint8(L.DP_HEAD[1]))
        # ears, then the face over them
        for side in (-1.0, 1.0):
            sd, _, _ = ellipse_sd(hx, hy, (side * (rx - 0.4), fc[1] + 1.0), 2.7, 4.8)
            self.canvas.paint(box, sd * s_px, b.skin, L.FACE, dp, shade=np.full(sd.shape, F32(0.86)))
        sd, u, v = ellipse_sd(hx, hy, fc, rx, ry)
        shade = _cyl_shade(u, b.light, 1.0, ambient=0.7) * (F32(0.97) - F32(0.05) * np.maximum(v, F32(0.0)))
        self.canvas.paint(box, sd * s_px, b.skin, L.FACE, dp, shade=shade)
        # features (colour only; they stay "face"), each on its own small box
        dark = np.array([0.12, 0.09, 0.08], F32)
        for cx_, cy_, ex, ey, col in (
            (-rx * 0.38, fc[1] - ry * 0.1, 2.0, 1.2, dark),
            (rx * 0.38, fc[1] - ry * 0.1, 2.0, 1.2, dark),
            (-rx * 0.38, fc[1] - ry * 0.3, 3.0, 0.8, b.hair_color * F32(0.8)),
            (rx * 0.38, fc[1] - ry * 0.3, 3.0, 0.8, b.hair_color * F32(0.8)),
            (0.0, fc[1] + ry * 0.2, 1.3, 2.6, b.skin * F32(0.84)),
            (0.0, fc[1] + ry * 0.52, 3.8, 1.25, b.lip),
        ):
            fbox = fr.box([(cx_, cy_)], max(ex, ey) + 1.0, head=True)
            if fbox is None:
                continue
            fhx, fhy = fr.body_to_head(*fr.from_px(fbox))
            sd, _, _ = ellipse_sd(fhx, fhy, (cx_, cy_), ex, ey)
            self.canvas.paint(fbox, sd * s_px, col, None, None)
        self._hair_front(box, hx, hy, dp)

    def _hair_front(self, box: Box, hx: np.ndarray, hy: np.ndarray, dp: np.ndarray) -> None:
        b, fr, geo = self.body, self.frame, self.geo
        fc = geo.face_c
        rx, ry = b.face_rx, b.face_ry
        cap, _, _ = ellipse_sd(hx, hy, (0.0, fc[1] - 3.5), rx + 2.4, ry + 0.6)
        part = F32(b.hair_part * rx)
        hairline = F32(fc[1] - ry * 0.45) + F32(ry * 0.22) * ((hx - part) * F32(1.0 / rx)) ** 2
        sd_top = np.minimum(cap, hairline - hy)
        side_len = {"short": 0.05, "bun": 0.05, "bob": 0.75, "long": 0.85, "long_front": 0.85}[b.hair_style]
        side_w = 2.2 if b.hair_style in ("short", "bun") else 3.2
        sd_sides = np.minimum(
            np.minimum(cap, np.abs(hx) - F32(rx - side_w)), F32(fc[1] + ry * side_len) - hy
        )
        sd = np.maximum(sd_top, sd_sides)
        if b.hair_style in ("bob", "long", "long_front"):
            outer = F32(rx + 4.0)
            lower = F32(fc[1] + ry * side_len)
            sd_hang = np.minimum(
                np.minimum(outer - np.abs(hx), np.abs(hx) - F32(rx - side_w)),
                np.minimum(lower - hy, hy - F32(fc[1] - 6.0)),
            )
            sd = np.maximum(sd, sd_hang)
        if b.hair_style == "bun":
            bun, _, _ = ellipse_sd(hx, hy, (0.0, fc[1] - ry - 6.0), 7.5, 6.5)
            sd = np.maximum(sd, bun)
        shade = F32(0.78) + F32(0.1) * np.sin(hx * F32(1.1) + hy * F32(0.2)) * F32(0.5) + F32(0.08) * np.clip(
            -cap * F32(0.1), F32(-1.0), F32(1.0)
        )
        self.canvas.paint(box, sd * F32(fr.s_px), b.hair_color, L.HAIR, None, shade=shade)
        # the skull part of the hair belongs to the DensePose head
        dview = self.canvas.densepose[box.slices]
        skull = (sd >= 0) & (cap >= 0)
        dview[skull] = dp[skull]

    def _hair_strands(self) -> None:
        b, fr, geo = self.body, self.frame, self.geo
        fc = geo.face_c
        rx, ry = b.face_rx, b.face_ry
        bottom = fc[1] + ry + b.hair_length
        for side in (-1.0, 1.0):
            a_h = (side * (rx + 0.5), fc[1] + ry * 0.2)
            c_h = (side * (rx + 3.0), bottom)
            a = tuple(float(v) for v in fr.head_to_body(*a_h))
            c = tuple(float(v) for v in fr.head_to_body(*c_h))
            box = fr.box([a, c], 8.0)
            if box is None:
                continue
            bx, by = fr.from_px(box)
            cap = capsule(bx, by, a, c, 5.5, 4.0, normal_sign=side)
            shade = F32(0.8) + F32(0.06) * np.sin(cap.across * F32(1.4))
            self.canvas.paint(box, cap.sd * F32(fr.s_px), b.hair_color, L.HAIR, 0, shade=shade)

    # -- pose -----------------------------------------------------------------------------------------------------
    def keypoints(self) -> np.ndarray:
        """COCO-18 keypoints (x, y, confidence) in pixels; (0, 0, 0) for points outside the image."""
        b, fr, geo = self.body, self.frame, self.geo
        fc = geo.face_c
        rx, ry = b.face_rx, b.face_ry
        right, left = geo.arms  # arms[0] is the image-left arm = the person's right
        pts_body: dict[str, tuple[float, float]] = {}
        head_pts = {
            "nose": (0.0, fc[1] + ry * 0.22),
            "right_eye": (-rx * 0.38, fc[1] - ry * 0.1),
            "left_eye": (rx * 0.38, fc[1] - ry * 0.1),
            "right_ear": (-(rx + 0.5), fc[1] + 1.0),
            "left_ear": (rx + 0.5, fc[1] + 1.0),
        }
        for name, (hx, hy) in head_pts.items():
            x, y = fr.head_to_body(hx, hy)
            pts_body[name] = (float(x), float(y))
        pts_body["neck"] = (0.0, 11.0)
        for name, arm in (("right", right), ("left", left)):
            j = arm.shoulder
            pts_body[f"{name}_shoulder"] = (j[0] + arm.spec.side * arm.spec.r_shoulder * 0.2, j[1] - 4.0)
            pts_body[f"{name}_elbow"] = arm.elbow
            pts_body[f"{name}_wrist"] = arm.wrist
        for k, name in ((0, "right"), (1, "left")):
            pts_body[f"{name}_hip"] = (geo.hips[k][0], geo.hips[k][1] + 1.0)
            pts_body[f"{name}_knee"] = geo.knees[k]
            pts_body[f"{name}_ankle"] = geo.ankles[k]
        out = np.zeros((L.NUM_KEYPOINTS, 3), np.float32)
        h, w = self.layout.height, self.layout.width
        for idx, name in enumerate(L.COCO18_KEYPOINTS):
            if name == "right_ear" and not b.ear_visible[0]:
                continue
            if name == "left_ear" and not b.ear_visible[1]:
                continue
            x, y = fr.to_px(*pts_body[name])
            x, y = float(x), float(y)
            if 0.0 <= x <= w - 1 and 0.0 <= y <= h - 1:
                out[idx] = (x, y, b.kp_conf[idx])
        return out
