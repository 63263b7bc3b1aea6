"""Garment-mask extraction quality and speed on the synthetic world's product photos; prints one JSON object.

    python benchmarks/garment_mask_quality.py                       # 200 garments, 256×192, seed 0, lossless
    python benchmarks/garment_mask_quality.py --n 200 --jpeg-quality 88 --seed 3
    python benchmarks/garment_mask_quality.py --height 512 --width 384 --output runs/bench/mask.json

For every garment it compares ``pfafn.garment_mask.extract_garment_mask`` against the exact mask of
``pfafn.synthetic.world`` (IoU), and reports the IoU distribution (min, p5, median, mean, fraction ≥ 0.95), the
refusals, how confidence separates good from bad masks, and the time per photo. A naive baseline — threshold the
CIELAB distance to the median border colour at ΔE 10, largest component, holes filled — is measured in the same run
and reported as a ratio. Thread pools are limited to one thread (the catalog decodes on one core per task); both
wall-clock and thread CPU time per photo are reported, the latter being the honest number on a loaded machine.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_name  # noqa: E402

from pfafn.garment_mask import GarmentMaskError, extract_garment_mask, rgb_to_lab  # noqa: E402


def _machine() -> dict:
    import PIL
    import scipy

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pillow": PIL.__version__,
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def naive_mask(image: np.ndarray, delta_e: float = 10.0) -> np.ndarray:
    """The baseline: ΔE to the median border colour > ``delta_e``, largest component, holes filled."""
    from scipy import ndimage as ndi

    lab = rgb_to_lab(image)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    fg = np.linalg.norm(lab - np.median(border, axis=0), axis=-1) > delta_e
    labels, n = ndi.label(fg)
    if n == 0:
        return fg
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndi.binary_fill_holes(labels == int(np.argmax(sizes)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def _dist(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = np.asarray(values, dtype=np.float64)
    return {
        "n": int(v.size),
        "min": round(float(v.min()), 4),
        "p5": round(float(np.percentile(v, 5)), 4),
        "median": round(float(np.median(v)), 4),
        "mean": round(float(v.mean()), 4),
        "frac_ge_0.95": round(float((v >= 0.95).mean()), 4),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="garments to evaluate")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jpeg-quality", type=int, default=0, help="re-encode each photo as JPEG first (0 = lossless)")
    ap.add_argument("--output", default=None, help="also write the JSON here (local path or s3://)")
    args = ap.parse_args(argv)

    from PIL import Image

    from pfafn.synthetic.world import SyntheticWorld, WorldConfig

    world = SyntheticWorld(1, args.n, WorldConfig(height=args.height, width=args.width, seed=args.seed))
    ious, base_ious, confs, refusals, worst = [], [], [], [], []
    t_mask = t_base = cpu_mask = 0.0
    for j in range(args.n):
        render = world.render_garment(j)
        image = render.image
        if args.jpeg_quality:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=args.jpeg_quality)
            image = np.asarray(Image.open(buf).convert("RGB"))
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            result = extract_garment_mask(image)
        except GarmentMaskError as exc:
            t_mask += time.perf_counter() - t0
            cpu_mask += time.thread_time() - c0
            refusals.append({"garment": j, "reason": exc.reason})
            result = None
        else:
            t_mask += time.perf_counter() - t0
            cpu_mask += time.thread_time() - c0
            iou = _iou(result.mask, render.mask)
            ious.append(iou)
            confs.append(result.confidence)
            worst.append((iou, j, result.confidence))
        t0 = time.perf_counter()
        base_ious.append(_iou(naive_mask(image), render.mask))
        t_base += time.perf_counter() - t0

    iou_arr = np.asarray(ious)
    conf_arr = np.asarray(confs)
    bad = iou_arr < 0.95
    summary = {
        "benchmark": "garment_mask_quality",
        "config": {"n": args.n, "height": args.height, "width": args.width, "seed": args.seed,
                   "jpeg_quality": args.jpeg_quality or None},
        "machine": _machine(),
        "iou": _dist(ious),
        "refusals": {"count": len(refusals), "fraction": round(len(refusals) / args.n, 4), "items": refusals},
        "confidence": {
            "min": round(float(conf_arr.min()), 4) if conf_arr.size else None,
            "median": round(float(np.median(conf_arr)), 4) if conf_arr.size else None,
            "bad_masks": int(bad.sum()),
            "bad_masks_below_0.5_confidence": int((bad & (conf_arr < 0.5)).sum()),
            "good_masks_below_0.5_confidence": int((~bad & (conf_arr < 0.5)).sum()),
        },
        "worst": [{"garment": j, "iou": round(i, 4), "confidence": c} for i, j, c in sorted(worst)[:5]],
        "ms_per_photo": round(1000.0 * t_mask / args.n, 2),
        "cpu_ms_per_photo": round(1000.0 * cpu_mask / args.n, 2),
        "baseline": {
            "name": "median-border ΔE>10 + largest component + fill holes",
            "iou": _dist(base_ious),
            "ms_per_photo": round(1000.0 * t_base / args.n, 2),
        },
    }
    if ious:
        summary["ratio_vs_baseline"] = {
            "mean_iou": round(float(iou_arr.mean()) / max(float(np.mean(base_ious)), 1e-9), 4),
            "frac_ge_0.95": round(float((iou_arr >= 0.95).mean()) / max(float(np.mean(np.asarray(base_ious) >= 0.95)),
                                                                         1e-9), 4),
        }
    if args.output:
        from pipelines.core import storage

        storage.write_json(args.output, summary)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
