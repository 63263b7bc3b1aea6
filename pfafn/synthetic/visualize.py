"""Visualisations of parsing / DensePose maps and the synthetic-world contact sheet (numpy + PIL).

``python -m pfafn.synthetic.visualize OUT.png [--seed S]`` regenerates ``docs/img/synthetic_examples.png``.
"""

from __future__ import annotations

import argparse
import colorsys

import numpy as np

from pfafn.synthetic import labels as L

# One fixed colour per parsing id (unused ids are grey).
PARSING_PALETTE = np.full((256, 3), 128, np.uint8)
for _label, _rgb in {
    L.BACKGROUND: (0, 0, 0),
    L.HAIR: (128, 64, 0),
    L.UPPER_CLOTHES: (255, 85, 0),
    L.LEFT_SHOE: (0, 128, 128),
    L.RIGHT_SHOE: (0, 160, 160),
    L.NOISE: (255, 255, 0),
    L.PANTS: (0, 85, 170),
    L.LEFT_LEG: (170, 255, 85),
    L.RIGHT_LEG: (85, 255, 170),
    L.LEFT_ARM: (51, 170, 221),
    L.FACE: (255, 204, 153),
    L.RIGHT_ARM: (0, 255, 255),
}.items():
    PARSING_PALETTE[_label] = _rgb

DENSEPOSE_PALETTE = np.zeros((256, 3), np.uint8)
for _part in range(1, L.NUM_DENSEPOSE_CHANNELS):
    _r, _g, _b = colorsys.hsv_to_rgb((_part * 0.618034) % 1.0, 0.75, 0.95)
    DENSEPOSE_PALETTE[_part] = (int(_r * 255), int(_g * 255), int(_b * 255))


def colorize_parsing(parsing: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 picture of a 14-class parsing map."""
    return PARSING_PALETTE[np.asarray(parsing, np.uint8)]


def colorize_densepose(densepose: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 picture of a DensePose part-index map (0 = black)."""
    return DENSEPOSE_PALETTE[np.asarray(densepose, np.uint8)]


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, radius: int = 2) -> np.ndarray:
    """A copy of ``image`` with the present keypoints drawn as small squares (missing ones skipped)."""
    out = np.array(image, copy=True)
    h, w = out.shape[:2]
    for k, (x, y, c) in enumerate(np.asarray(keypoints)):
        if c <= 0:
            continue
        xi, yi = int(round(float(x))), int(round(float(y)))
        r, g, b = colorsys.hsv_to_rgb(k / 18.0, 1.0, 1.0)
        out[max(yi - radius, 0) : min(yi + radius + 1, h), max(xi - radius, 0) : min(xi + radius + 1, w)] = (
            int(r * 255),
            int(g * 255),
            int(b * 255),
        )
    return out


def contact_sheet(seed: int = 0, columns: int = 6, height: int = 256, width: int = 192, gap: int = 4) -> np.ndarray:
    """A grid picture of a small world: product photos, models in their own garment, unpaired ground truths,
    then parsing / DensePose / keypoints / noisy parsing of a few models. Returns H×W×3 uint8."""
    from pfafn.synthetic.world import SyntheticWorld, WorldConfig

    world = SyntheticWorld(columns, columns, WorldConfig(height=height, width=width, seed=seed, parsing_noise=0.6))
    renders = [world.render_person(i) for i in range(columns)]
    rows = [
        [world.render_garment(j).image for j in range(columns)],
        [r.image for r in renders],
        [world.render_person(i, world.unpaired_garments(i, 1)[0]).image for i in range(columns)],
    ]
    half = columns // 2
    label_row: list[np.ndarray] = []
    for i in range(half):
        r = renders[i]
        label_row.append(draw_keypoints(colorize_parsing(r.parsing), r.keypoints))
        label_row.append(colorize_densepose(r.densepose))
    rows.append(label_row[:columns])
    noisy_row: list[np.ndarray] = []
    for i in range(half):
        noisy_row.append(colorize_parsing(world.noisy_parsing(i, parsing=renders[i].parsing)))
        noisy_row.append((renders[i].garment_mask[:, :, None] * np.array([255, 255, 255], np.uint8)).astype(np.uint8))
    rows.append(noisy_row[:columns])
    captions = [
        "garment product photos (exact masks not shown)",
        "models wearing their own garment (row 1, same order)",
        "unpaired ground truth: the same models wearing another garment",
        "exact parsing + keypoints | DensePose parts (models 1-3 of row 2)",
        "noisy parsing (parsing_noise=0.6) | garment mask = parsing label 4",
    ]
    band = 14
    sheet_h = len(rows) * (height + band) + (len(rows) + 1) * gap
    sheet_w = columns * width + (columns + 1) * gap
    sheet = np.full((sheet_h, sheet_w, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y = gap + r * (height + band + gap) + band
        for c, tile in enumerate(row):
            x = gap + c * (width + gap)
            sheet[y : y + height, x : x + width] = tile
    return _caption(sheet, [(gap + r * (height + band + gap), text) for r, text in enumerate(captions)], gap)


def _caption(sheet: np.ndarray, lines: list[tuple[int, str]], x: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    for y, text in lines:
        draw.text((x, y), text, fill=(40, 40, 40))
    return np.asarray(img)


def main(argv: list[str] | None = None) -> None:
    from PIL import Image

    parser = argparse.ArgumentParser(description="Write the synthetic-world contact sheet PNG.")
    parser.add_argument("output", help="PNG path, e.g. docs/img/synthetic_examples.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, default=6)
    args = parser.parse_args(argv)
    sheet = Image.fromarray(contact_sheet(seed=args.seed, columns=args.columns))
    # a 256-colour palette keeps the docs picture small (the renders' sensor noise defeats PNG compression)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        args.output, optimize=True
    )
    print(args.output)


if __name__ == "__main__":
    main()
