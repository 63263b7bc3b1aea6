"""A small line chart drawn with Pillow (matplotlib is not a dependency): training's ``loss_curve.png``.

One line per series, x and y axes with ticks at 1-2-5 steps, a log-scale y axis when the values span two decades or
more, vertical markers (phase boundaries) and a legend. Series with more points than the plot has pixel columns are
averaged per column, so a 100k-step history draws as fast as a short one.
"""
from __future__ import annotations

import io
import json
import math
from typing import Sequence

#: Line colours, distinguishable for the common colour-vision deficiencies (Okabe & Ito, "Color Universal Design",
#: https://jfly.uni-koeln.de/color/).
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
           (0, 0, 0), (240, 228, 66))
LOG_SPAN = 100.0  # max / min of the values at which the y axis turns logarithmic

Point = tuple[float, "float | None"]


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 × 10^k apart) covering ``[lo, hi]``, about ``target`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, target - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _label(v: float) -> str:
    if v == int(v) and abs(v) < 1e7:
        return str(int(v))
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.0e}"


def _bin(points: list[Point], x0: float, x1: float, columns: int) -> list[Point]:
    """Points averaged per pixel column (a None breaks the line: its column stays a gap)."""
    if len(points) <= columns:
        return points
    span = (x1 - x0) or 1.0
    sums: dict[int, list[float]] = {}
    gaps: set[int] = set()
    for x, y in points:
        col = min(columns - 1, int((x - x0) / span * columns))
        if y is None:
            gaps.add(col)
        else:
            sums.setdefault(col, [0.0, 0.0, 0.0])
            s = sums[col]
            s[0] += x
            s[1] += y
            s[2] += 1
    out: list[Point] = []
    for col in sorted(set(sums) | gaps):
        if col in sums:
            s = sums[col]
            out.append((s[0] / s[2], s[1] / s[2]))
        else:
            out.append((x0 + (col + 0.5) * span / columns, None))
    return out


class _Axes:
    """The data -> pixel mapping of the plot area (linear x; linear or log10 y)."""

    def __init__(self, box: tuple[int, int, int, int], xs: tuple[float, float], ys: tuple[float, float], log: bool):
        self.box, self.log = box, log
        self.x0, self.x1 = xs
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        self.y0, self.y1 = (math.log10(ys[0]), math.log10(ys[1])) if log else ys
        pad = (self.y1 - self.y0) * 0.05 or abs(self.y0) * 0.1 or 1.0  # lines off the frame; a flat line centred
        self.y0, self.y1 = self.y0 - pad, self.y1 + pad

    def px(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        yy = math.log10(y) if self.log else y
        return (left + (x - self.x0) / (self.x1 - self.x0) * (right - left),
                bottom - (yy - self.y0) / (self.y1 - self.y0) * (bottom - top))

    def y_ticks(self) -> list[float]:
        if not self.log:
            return nice_ticks(self.y0, self.y1)
        return [10.0 ** k for k in range(math.ceil(self.y0 - 1e-9), math.floor(self.y1 + 1e-9) + 1)]


def line_chart_png(series: dict[str, list[Point]], *, title: str, x_label: str = "step",
                   markers: Sequence[tuple[float, str]] = (), size: tuple[int, int] = (760, 420),
                   meta: dict | None = None) -> bytes:
    """A PNG of ``series`` (name -> ``[(x, y or None)]``, None: a gap); ``markers`` are ``(x, label)`` vertical
    lines; ``meta`` is stored as a JSON ``tEXt`` chunk ``pfafn`` (what the chart covers, for tools and tests)."""
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    width, height = size
    font = ImageFont.load_default(size=12)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    box = (64, 30, width - 190, height - 44)
    draw.text((box[0], 8), title, fill="black", font=font)
    valid = [(x, y) for pts in series.values() for x, y in pts if y is not None and math.isfinite(y)]
    if not valid:
        draw.text((box[0], box[1] + 20), "no finite values yet", fill="gray", font=font)
        return _png(img, meta, PngInfo)
    xs = [x for x, _ in valid] + [x for x, _ in markers]
    positive = [y for _, y in valid if y > 0]
    log = len(positive) == len(valid) and max(positive) / min(positive) >= LOG_SPAN
    axes = _Axes(box, (min(xs), max(xs)), (min(y for _, y in valid), max(y for _, y in valid)), log)
    _draw_axes(draw, axes, font, x_label)
    for (x, label) in markers:
        _marker(draw, axes, x, label, font)
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        _polyline(draw, axes, _bin(list(pts), axes.x0, axes.x1, box[2] - box[0]), colour)
        y = box[1] + 4 + 18 * i
        draw.line([(box[2] + 14, y + 7), (box[2] + 38, y + 7)], fill=colour, width=3)
        draw.text((box[2] + 44, y), name, fill="black", font=font)
    return _png(img, meta, PngInfo)


def _png(img, meta: dict | None, png_info) -> bytes:
    info = png_info()
    if meta:
        info.add_text("pfafn", json.dumps(meta, sort_keys=True))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _draw_axes(draw, axes: _Axes, font, x_label: str) -> None:
    left, top, right, bottom = axes.box
    for x in nice_ticks(axes.x0, axes.x1):
        px, _ = axes.px(x, 10 ** axes.y0 if axes.log else axes.y0)
        draw.line([(px, top), (px, bottom)], fill=(235, 235, 235))
        draw.line([(px, bottom), (px, bottom + 4)], fill="black")
        text = _label(x)
        draw.text((px - draw.textlength(text, font=font) / 2, bottom + 6), text, fill="black", font=font)
    for y in axes.y_ticks():
        _, py = axes.px(axes.x0, y)
        if top - 0.5 <= py <= bottom + 0.5:
            draw.line([(left, py), (right, py)], fill=(235, 235, 235))
            draw.line([(left - 4, py), (left, py)], fill="black")
            text = _label(y)
            draw.text((left - 6 - draw.textlength(text, font=font), py - 7), text, fill="black", font=font)
    draw.rectangle(axes.box, outline="black")
    draw.text(((left + right - draw.textlength(x_label, font=font)) / 2, bottom + 24), x_label, fill="black",
              font=font)
    if axes.log:
        draw.text((right - draw.textlength("y: log scale", font=font), top - 16), "y: log scale", fill="gray",
                  font=font)


def _marker(draw, axes: _Axes, x: float, label: str, font) -> None:
    px, _ = axes.px(x, 10 ** axes.y0 if axes.log else axes.y0)
    top, bottom = axes.box[1], axes.box[3]
    for y in range(top, bottom, 8):
        draw.line([(px, y), (px, min(bottom, y + 4))], fill=(120, 120, 120))
    draw.text((px + 3, top + 2), label, fill=(90, 90, 90), font=font)


def _polyline(draw, axes: _Axes, pts: list[Point], colour) -> None:
    """Draw the runs of drawable points as lines (a lone point as a dot); None, non-finite and (log) <= 0 values
    break the line."""
    run: list[tuple[float, float]] = []
    for x, y in pts + [(0.0, None)]:
        if y is not None and math.isfinite(y) and (y > 0 or not axes.log):
            run.append(axes.px(x, y))
            continue
        if len(run) > 1:
            draw.line(run, fill=colour, width=2, joint="curve")
        elif run:
            (px, py), = run
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        run = []
