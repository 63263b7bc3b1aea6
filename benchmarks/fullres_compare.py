"""Output at the photo's own size vs plain upscaling: a side-by-side PNG and the garment region's sharpness (JSON).

    python benchmarks/fullres_compare.py                                   # 768×576 photos, 256×192 model
    python benchmarks/fullres_compare.py --output-json docs/fullres_compare.json --output-png docs/img/fullres_compare.png

A synthetic-world person and garment (``pfafn.synthetic``) are rendered at ``--photo-height`` × ``--photo-width``;
the garment gets a fine pattern (1-pixel pinstripes and a small checker) that the 256×192 model canvas cannot hold.
The low-res outputs the catalog actor hands over are built explicitly rather than by a network: an affine flow that
maps the garment onto the person's upper-clothes box, ``rendered`` = the person as the model sees it, blend mask 1.
No published weights are in this repository and a random-init network's flow is random; the resampling measured
here is geometry and does not depend on training. Two results are compared:

* plain: the published composition at the model size (the garment warped in the 256×192 canvas), letterbox removed
  and bicubic-upscaled to the photo size — what a try-on codebase delivers when asked for a larger image;
* ours: :func:`pfafn.fullres.compose_fullres` (the flow upsampled, the original garment photo sampled with it).

Sharpness is the variance of the Laplacian of the grey image (Pech-Pacheco et al., "Diatom autofocusing in
brightfield microscopy: a comparative study", ICPR 2000) inside the garment region (the full-size warped mask,
eroded by 3 pixels), and for the garment photo inside its own mask. Also reported: the time of one composition.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfafn import imageio  # noqa: E402
from pfafn.fullres import canvas_grid, change_region, compose_fullres, pack_lowres  # noqa: E402
from pfafn.imageio import fit_geometry, fit_image, fit_mask  # noqa: E402
from pfafn.nn.flow import identity_grid, warp  # noqa: E402
from pfafn.synthetic.labels import UPPER_CLOTHES  # noqa: E402
from pfafn.synthetic.world import SyntheticWorld, WorldConfig  # noqa: E402
from pfafn.tryon import compose_tryon  # noqa: E402


def laplacian_var(img: np.ndarray, region: np.ndarray) -> float:
    g = torch.from_numpy(img.astype(np.float32).mean(-1))[None, None]
    k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32)[None, None]
    lap = F.conv2d(g, k, padding=1)[0, 0].numpy()
    return float(lap[region].var())


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    t = torch.from_numpy((~mask).astype(np.float32))[None, None]
    return ~(F.max_pool2d(t, 2 * r + 1, stride=1, padding=r)[0, 0].numpy() > 0)


def patterned_garment(world: SyntheticWorld, j: int) -> tuple[np.ndarray, np.ndarray]:
    render = world.render_garment(j)
    img, mask = render.image.copy(), render.mask.astype(bool)
    y, x = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    stripes = (x % 4) < 1  # 1-pixel pinstripes every 4 pixels
    checker = ((x // 3 + y // 3) % 2 == 0) & (np.abs(y - img.shape[0] * 0.45) < img.shape[0] * 0.06)
    img[mask & stripes] = (20, 20, 70)
    img[mask & checker] = (240, 240, 240)
    return img, mask


def bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def affine_flow(person_box, garment_box, h: int, w: int) -> torch.Tensor:
    """Flow (1×2×h×w normalised grid into the garment canvas) mapping the person's box onto the garment's box."""
    (px0, py0, px1, py1), (gx0, gy0, gx1, gy1) = person_box, garment_box
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    gx = gx0 + (xs - px0) * (gx1 - gx0) / max(px1 - px0, 1)
    gy = gy0 + (ys - py0) * (gy1 - gy0) / max(py1 - py0, 1)
    return torch.stack([gx / ((w - 1) / 2) - 1, gy / ((h - 1) / 2) - 1])[None]


def drawn_scale(garment: np.ndarray, gmask: np.ndarray, parsing_c: np.ndarray, g) -> tuple[np.ndarray, np.ndarray]:
    """The garment photo resized (Lanczos, antialiased) to the size it is drawn at on the person photo — the
    sharpest that output can honestly be: detail finer than that is above the output's Nyquist limit — and its
    eroded mask."""
    gx0, gy0, gx1, gy1 = bbox(gmask)
    px0, py0, px1, py1 = bbox(parsing_c)
    scale = ((px1 - px0) / g.scale_x / (gx1 - gx0) + (py1 - py0) / g.scale_y / (gy1 - gy0)) / 2
    size = (max(1, round(garment.shape[1] * scale)), max(1, round(garment.shape[0] * scale)))
    small = np.asarray(Image.fromarray(garment).resize(size, Image.Resampling.LANCZOS))
    small_mask = np.asarray(Image.fromarray(gmask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 127
    return small, erode(small_mask, 3)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo-height", type=int, default=768)
    ap.add_argument("--photo-width", type=int, default=576)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-json", default="")
    ap.add_argument("--output-png", default="")
    args = ap.parse_args(argv)
    H, W = args.height, args.width
    world = SyntheticWorld(1, 2, WorldConfig(height=args.photo_height, width=args.photo_width, seed=args.seed))
    person_r = world.render_person(0)
    person = person_r.image
    garment, gmask = patterned_garment(world, 1)

    # the model's view: letterboxed canvases
    person_c = torch.from_numpy(imageio.to_model_tensor(fit_image(person, H, W)))[None]
    garment_c = torch.from_numpy(imageio.to_model_tensor(fit_image(garment, H, W)))[None]
    gmask_c = torch.from_numpy((fit_mask(gmask, H, W) > 0.5).astype(np.float32))[None, None]
    parsing_c = fit_mask((person_r.parsing == UPPER_CLOTHES).astype(np.float32), H, W) > 0.5
    flow = affine_flow(bbox(parsing_c), bbox(gmask_c[0, 0].numpy() > 0), H, W)
    warped_g, warped_m = warp(garment_c * gmask_c, flow, "border"), warp(gmask_c, flow, "zeros")
    blend = torch.ones(1, 1, H, W)
    gen_out = torch.cat([torch.atanh(person_c.clamp(-0.999, 0.999)), torch.full((1, 1, H, W), 20.0)], 1)
    tryon_low, rendered, composite = compose_tryon(gen_out, warped_g, warped_m)
    region = change_region(tryon_low, person_c, composite)
    lowres = pack_lowres(flow, rendered, blend, region, gmask_c)[0]

    torch.set_num_threads(1)
    started = time.perf_counter()
    ours = compose_fullres(person, garment, gmask.astype(np.uint8) * 255, lowres)
    compose_s = time.perf_counter() - started

    g = fit_geometry(person.shape[0], person.shape[1], H, W)
    low_img = imageio.from_model_tensor(tryon_low[0])[g.top:g.top + g.new_height, g.left:g.left + g.new_width]
    plain = np.asarray(Image.fromarray(low_img).resize((person.shape[1], person.shape[0]), Image.Resampling.BICUBIC))

    wm_full = F.grid_sample(warped_m, canvas_grid(g), align_corners=True)[0, 0].numpy() > 0.5
    garment_region = erode(wm_full, 3)
    result = {
        "photo": [int(person.shape[0]), int(person.shape[1])],
        "model": [H, W],
        "garment_region_px": int(garment_region.sum()),
        "sharpness_laplacian_var": {
            "garment_photo": round(laplacian_var(garment, erode(gmask, 3)), 1),
            "garment_photo_at_drawn_scale": round(laplacian_var(*drawn_scale(garment, gmask, parsing_c, g)), 1),
            "plain_upscaling": round(laplacian_var(plain, garment_region), 1),
            "ours": round(laplacian_var(ours, garment_region), 1),
        },
        "unchanged_pixels_identical": bool(np.array_equal(
            ours[F.grid_sample(region, canvas_grid(g), align_corners=True)[0, 0].numpy() == 0],
            person[F.grid_sample(region, canvas_grid(g), align_corners=True)[0, 0].numpy() == 0])),
        "compose_s_1_thread": round(compose_s, 3),
    }
    if args.output_png:
        rows = slice(int(person.shape[0] * 0.25), int(person.shape[0] * 0.7))  # the torso band, at full resolution
        strip = np.concatenate([garment[rows], plain[rows], ours[rows]], 1)
        Path(args.output_png).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strip).save(args.output_png, optimize=True)
    text = json.dumps(result, indent=2)
    if args.output_json:
        Path(args.output_json).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
