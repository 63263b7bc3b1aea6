"""Reproduce PF-AFN's central claim on the synthetic world: one command, prints one JSON object.

    python -m benchmarks.reproduce_claim --preset cpu [--noise 0.0,0.6] [--work-dir DIR] [--write-docs]
    python -m benchmarks.reproduce_claim --docs-from RESULT.json     # (re)write docs/results.md from a saved run

The claim (docs/results.md; Ge et al., CVPR 2021): the parser-free student trained teacher-tutor-student (input = the
tutor's fake image, target = the real photo, adjustable appearance-flow distillation) beats (1) its parser-based
tutor and (2) a WUTON-style parser-free student trained to reproduce the tutor's outputs; the ablation (3) without
distillation shows what the distillation adds.

Per parsing-noise level (the noisy parsing is what the tutor sees, in training and at test time):

1. ``pipelines.stages.generate_synthetic.run``  world (train models in their garment; test models with exact unpaired
   ground truth ``ground_truth.parquet``);
2. ``pipelines.stages.train_tutor.run``        the parser-based tutor;
3. ``pipelines.stages.tutor_inference.run``    its fakes (each train person in another garment);
4. ``pipelines.stages.distill.run`` three times, same seed / data / budget:
   ``pfafn``    supervision=real, distill.enabled=true   (the paper);
   ``wuton``    supervision=tutor                        (WUTON-style: reproduce the tutor's try-on);
   ``ablation`` supervision=real, distill.enabled=false  (no distillation);
5. evaluation in-process on the same held-out unpaired (test model, other garment) pairs against the exact
   renders: SSIM, PSNR (``pfafn.metrics``), L1 on the whole image, and L1 / PSNR / SSIM on the garment region (the
   exact garment mask of the ground-truth render; SSIM on its bounding box). The tutor runs with
   ``cloth_region="warped"`` on the test model's *noisy* parsing, DensePose and pose (what a real parser gives);
   the students see only (photo, garment, garment mask). An extra reference row ``input_photo`` scores the
   unchanged person photo (no try-on) against the ground truth.

Reported per level and model: mean ± standard error; paired comparisons PF-AFN − X per pair with a seeded
bootstrap 95 % CI of the mean difference and a two-sided sign test. Every stage is resumable, so re-running with
the same ``--work-dir`` skips finished work.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.machine import cpu_name  # noqa: E402

log = logging.getLogger("reproduce_claim")

MODELS = ("tutor", "wuton", "ablation", "pfafn")
MODEL_LABELS = {"tutor": "tutor (PB-AFN, parser-based)", "wuton": "WUTON-style student (target = tutor output)",
                "ablation": "PF-AFN student, no distillation", "pfafn": "PF-AFN student (paper)",
                "input_photo": "reference: input photo, no try-on"}
STUDENTS = {
    "pfafn": {"supervision": "real", "distill": {"enabled": True}},
    "wuton": {"supervision": "tutor", "distill": {"enabled": True}},
    "ablation": {"supervision": "real", "distill": {"enabled": False}},
}
METRICS = ("ssim", "psnr", "l1", "garment_ssim", "garment_psnr", "garment_l1")
HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "l1": False, "garment_ssim": True, "garment_psnr": True,
                    "garment_l1": False}
COMPARISONS = (("pfafn", "tutor"), ("pfafn", "wuton"), ("pfafn", "ablation"))
PSNR_CAP = 100.0
SCHEMA_VERSION = 1

TINY_WIDTHS = {"encoder_channels": [8, 16, 32, 32, 32], "fpn_dim": 16, "flow_channels": [16, 8, 8], "ngf": 8}
CPU_WIDTHS = {"encoder_channels": [16, 32, 64, 64, 64], "fpn_dim": 32, "flow_channels": [32, 16, 16], "ngf": 16}
PUBLISHED_WIDTHS = {"encoder_channels": [64, 128, 256, 256, 256], "fpn_dim": 256, "flow_channels": [128, 64, 32],
                    "ngf": 64}
# One thread: on the shared 2-core machine two torch threads per process were 2-10x slower (oversubscription).
_ONE_CPU_TRAIN = {"num_workers": 1, "cpus_per_worker": 1.0, "decode_cpus": 0.5, "torch_threads": 1}

# A preset: the world, the tutor / distill configs (layered over the stages' own presets), evaluation size.
PRESETS: dict[str, dict[str, Any]] = {
    # A couple of minutes: pipeline plumbing only (the models learn little).
    "smoke": {
        "noise": [0.6], "height": 64, "width": 64, "persons": 14, "garments": 14, "test_fraction": 0.3,
        "unpaired_per_model": 2, "k": 1, "eval_pairs": 8, "pictures": 3, "device": "cpu", "torch_threads": 1,
        "tutor": {"base": "tiny", "set": {"widths": TINY_WIDTHS, "train": _ONE_CPU_TRAIN, "val_samples": 2,
                                          "preview": False, "warp": {"niter": 1, "niter_decay": 1, "lr": 1e-3},
                                          "e2e": {"niter": 1, "niter_decay": 0, "lr": 1e-3}}},
        "distill": {"base": "tiny", "set": {"train": _ONE_CPU_TRAIN, "val_samples": 2, "gt_samples": 2,
                                            "warp": {"niter": 1, "niter_decay": 0, "lr": 1e-3},
                                            "e2e": {"niter": 1, "niter_decay": 0, "lr": 1e-3},
                                            "freeze_epochs": 0}},
    },
    # <= 60 min on the 2-core development machine, everything included (sized from measured stage times).
    "cpu": {
        "noise": [0.0, 0.6], "height": 128, "width": 96, "persons": 320, "garments": 320, "test_fraction": 0.1,
        "unpaired_per_model": 2, "k": 1, "eval_pairs": 64, "pictures": 6, "device": "cpu", "torch_threads": 1,
        "tutor": {"base": "cpu", "set": {"widths": CPU_WIDTHS, "train": _ONE_CPU_TRAIN, "batch_size": 8,
                                         "val_samples": 8, "preview": True,
                                         "warp": {"niter": 2, "niter_decay": 1, "lr": 5e-4},
                                         "e2e": {"niter": 1, "niter_decay": 1, "lr": 5e-4}}},
        "distill": {"base": "cpu", "set": {"train": _ONE_CPU_TRAIN, "batch_size": 8, "val_samples": 4,
                                           "gt_samples": 4, "freeze_epochs": 1,
                                           "warp": {"niter": 1, "niter_decay": 1, "lr": 5e-4},
                                           "e2e": {"niter": 1, "niter_decay": 0, "lr": 5e-4}}},
    },
    # One GPU, 256x192, published widths and VGG loss (needs torchvision's vgg19-dcbb9e9d.pth in the hub cache).
    "gpu": {
        "noise": [0.0, 0.3, 0.6], "height": 256, "width": 192, "persons": 2000, "garments": 2000,
        "test_fraction": 0.1, "unpaired_per_model": 2, "k": 1, "eval_pairs": 400, "pictures": 8, "device": "cuda",
        "torch_threads": 0,
        "tutor": {"base": "published", "set": {"widths": PUBLISHED_WIDTHS, "val_samples": 64,
                                               "train": {"num_workers": 1, "use_gpu": True, "sync_batchnorm": False,
                                                         "cpus_per_worker": 4.0, "decode_cpus": 1.0},
                                               "warp": {"niter": 10, "niter_decay": 10, "lr": 5e-5},
                                               "e2e": {"niter": 10, "niter_decay": 10, "lr": 5e-5}}},
        "distill": {"base": "published", "set": {"val_samples": 64, "gt_samples": 64,
                                                 "train": {"num_workers": 1, "use_gpu": True,
                                                           "sync_batchnorm": False, "cpus_per_worker": 4.0,
                                                           "decode_cpus": 1.0},
                                                 "warp": {"niter": 10, "niter_decay": 10, "lr": 3e-5},
                                                 "e2e": {"niter": 10, "niter_decay": 10, "lr": 5e-5}}},
    },
}


# ----------------------------------------------------------------------------------------------------------------------
# Statistics


def mean_se(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    n = int(v.size)
    se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(v.mean()) if n else float("nan"), "se": se, "n": n}


def sign_test_p(diffs: np.ndarray) -> float:
    """Two-sided exact sign test (ties dropped); 1.0 when every difference is a tie."""
    from scipy.stats import binomtest

    d = np.asarray(diffs, dtype=np.float64)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    if pos + neg == 0:
        return 1.0
    return float(binomtest(pos, pos + neg, 0.5).pvalue)


def bootstrap_ci(diffs: np.ndarray, *, groups: np.ndarray | None = None, resamples: int = 10000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences (seeded, so reruns print the same numbers).

    With ``groups`` (e.g. the test model of each pair) whole groups are resampled (cluster bootstrap): pairs of one
    person are not independent, so resampling pairs would overstate the precision."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, d.size, size=(resamples, d.size))
        means = d[idx].mean(axis=1)
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        k = int(inverse.max()) + 1
        sums = np.bincount(inverse, weights=d, minlength=k)
        counts = np.bincount(inverse, minlength=k).astype(np.float64)
        idx = rng.integers(0, k, size=(resamples, k))
        means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired_comparison(a: np.ndarray, b: np.ndarray, higher_is_better: bool, seed: int = 0,
                      groups: np.ndarray | None = None) -> dict[str, Any]:
    """a − b per pair: mean, bootstrap 95 % CI (by group when ``groups`` is given), sign test (on the per-group
    mean differences when grouped: the independent units), wins (a better) / losses / ties per pair, a verdict."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    lo, hi = bootstrap_ci(d, groups=groups, seed=seed)
    better = d > 0 if higher_is_better else d < 0
    worse = d < 0 if higher_is_better else d > 0
    if groups is not None and d.size:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        unit = np.bincount(inverse, weights=d) / np.bincount(inverse)
    else:
        unit = d
    if lo > 0 or hi < 0:
        a_better = (lo > 0) == higher_is_better
        verdict = "better" if a_better else "worse"
    else:
        verdict = "no significant difference"
    return {"mean_diff": float(d.mean()), "ci95": [lo, hi], "sign_test_p": sign_test_p(unit),
            "sign_test_units": int(unit.size), "wins": int(better.sum()), "losses": int(worse.sum()),
            "ties": int(d.size - better.sum() - worse.sum()), "n": int(d.size), "verdict": verdict}


# ----------------------------------------------------------------------------------------------------------------------
# Per-pair metrics


def pair_metrics(pred, target, garment_mask) -> dict[str, np.ndarray]:
    """Per-sample metrics of B×3×H×W images in [-1, 1] against the ground truth; ``garment_mask`` B×1×H×W {0, 1}
    (the ground truth's garment region). Garment-region PSNR / L1 are over the mask's pixels; garment SSIM is on
    the mask's bounding box (grown by 4 px, at least the 11×11 SSIM window)."""
    import torch

    from pfafn.metrics import psnr, ssim, to_unit_range

    p = to_unit_range(pred.float())
    t = to_unit_range(target.float())
    m = garment_mask.float()
    out = {
        "ssim": ssim(p, t).double().numpy(),
        "psnr": torch.clamp(psnr(p, t), max=PSNR_CAP).double().numpy(),
        "l1": (p - t).abs().mean(dim=(1, 2, 3)).double().numpy(),
    }
    g_ssim, g_psnr, g_l1 = [], [], []
    h, w = p.shape[-2:]
    for b in range(p.shape[0]):
        mb = m[b, 0] > 0.5
        n = int(mb.sum())
        if n == 0:
            g_ssim.append(float("nan"))
            g_psnr.append(float("nan"))
            g_l1.append(float("nan"))
            continue
        err = (p[b] - t[b])[:, mb]
        g_l1.append(float(err.abs().mean()))
        mse = float(err.double().pow(2).mean())
        g_psnr.append(min(PSNR_CAP, 10.0 * math.log10(1.0 / mse)) if mse > 0 else PSNR_CAP)
        ys, xs = torch.nonzero(mb, as_tuple=True)
        y0, y1 = _span(int(ys.min()), int(ys.max()), h)
        x0, x1 = _span(int(xs.min()), int(xs.max()), w)
        g_ssim.append(float(ssim(p[b:b + 1, :, y0:y1, x0:x1], t[b:b + 1, :, y0:y1, x0:x1])[0]))
    out["garment_ssim"] = np.asarray(g_ssim)
    out["garment_psnr"] = np.asarray(g_psnr)
    out["garment_l1"] = np.asarray(g_l1)
    return out


def _span(lo: int, hi: int, size: int, grow: int = 4, minimum: int = 11) -> tuple[int, int]:
    lo, hi = max(0, lo - grow), min(size, hi + 1 + grow)
    while hi - lo < minimum:
        lo, hi = max(0, lo - 1), min(size, hi + 1)
    return lo, hi


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation (in-process, no Ray)


def _model_index(ident: str) -> int:
    return int(ident.lstrip("mg"))


def load_eval_pairs(data: str, height: int, width: int, limit: int) -> dict[str, Any]:
    """Decode the first ``limit`` ground-truth pairs of a dataset root (sorted by (model, garment)) at H×W: person,
    noisy parsing, DensePose, keypoints, garment + mask, the ground truth and its exact garment mask."""
    from pfafn.synthetic import SyntheticWorld, WorldConfig
    from pfafn.imageio import fit_mask
    from pipelines.core import storage
    from pipelines.training import data as tdata

    root = tdata.load_root(data)
    errors: list[dict] = []
    samples = tdata.unpaired_ground_truth_samples(root, limit, errors)
    if not samples:
        raise ValueError(f"{data} has no usable ground-truth pairs ({errors[:1]})")
    world_cfg = storage.read_json(storage.join_uri(data, "world.json"))
    world = SyntheticWorld(world_cfg["persons"], world_cfg["garments"],
                           WorldConfig(height=world_cfg["height"], width=world_cfg["width"], seed=world_cfg["seed"],
                                       parsing_noise=world_cfg["parsing_noise"]))
    spec = tdata.DecodeSpec(height, width, ("person", "keypoints", "parsing", "densepose", "garment", "garment_mask",
                                            "target"))
    rows: dict[str, list] = {k: [] for k in spec.fields + ("gt_garment_mask",)}
    keys = []
    for s in samples:
        dec = tdata.decode_row(s, spec)
        i, j = _model_index(s["model_id"]), _model_index(s["garment_id"])
        gm = world.render_person(i, j).garment_mask
        gm = fit_mask(gm.astype(np.uint8) * 255, height, width) > 0.5
        for k in spec.fields:
            rows[k].append(dec[k])
        rows["gt_garment_mask"].append(gm)
        keys.append(s["sample_key"])
    return {"keys": keys, **{k: np.stack(v) for k, v in rows.items()}, "dropped": len(errors)}


def _tensors(pairs: dict, sl: slice) -> dict:
    import torch

    from pipelines.training import data as tdata

    return {
        "person": tdata.image_tensor(pairs["person"][sl], "cpu"),
        "parsing": tdata.label_tensor(pairs["parsing"][sl], "cpu"),
        "densepose": tdata.label_tensor(pairs["densepose"][sl], "cpu"),
        "keypoints": torch.as_tensor(pairs["keypoints"][sl]),
        "garment": tdata.image_tensor(pairs["garment"][sl], "cpu"),
        "mask": tdata.mask_tensor(pairs["garment_mask"][sl], "cpu"),
        "target": tdata.image_tensor(pairs["target"][sl], "cpu"),
        "gt_mask": torch.as_tensor(pairs["gt_garment_mask"][sl]).float().unsqueeze(1),
    }


def run_models(checkpoints: dict[str, str], pairs: dict, batch_size: int = 8) -> dict[str, Any]:
    """Try-on images (uint8 N×H×W×3) of every model on the pairs, and per-pair metrics."""
    import torch

    from pfafn.checkpoint import load_checkpoint
    from pfafn.imageio import from_model_tensor
    from pfafn.person import tutor_warp_input
    from pfafn.tutor import TutorModel

    nets = {}
    for name, uri in checkpoints.items():
        loaded = load_checkpoint(uri, map_location="cpu")
        if name == "tutor":
            nets[name] = TutorModel.from_checkpoint(loaded).eval()
        else:
            nets[name] = loaded.tryon_model().eval()
    n = len(pairs["keys"])
    images: dict[str, list] = {k: [] for k in nets}
    metrics: dict[str, dict[str, list]] = {k: {m: [] for m in METRICS} for k in list(nets) + ["input_photo"]}
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = _tensors(pairs, slice(start, start + batch_size))
            outs = {}
            for name, net in nets.items():
                if name == "tutor":
                    rep = tutor_warp_input(x["parsing"], x["densepose"], x["keypoints"])
                    outs[name] = net(rep, x["person"], x["parsing"], x["densepose"], x["garment"], x["mask"],
                                     cloth_region="warped").tryon
                else:
                    outs[name] = net(x["person"], x["garment"], x["mask"]).tryon
            outs["input_photo"] = x["person"]
            for name, out in outs.items():
                for m, v in pair_metrics(out, x["target"], x["gt_mask"]).items():
                    metrics[name][m].extend(v.tolist())
                if name in images:
                    images[name].extend(from_model_tensor(out[b]) for b in range(out.shape[0]))
    return {"images": {k: np.stack(v) for k, v in images.items()},
            "metrics": {k: {m: np.asarray(v) for m, v in d.items()} for k, d in metrics.items()}}


def summarize(metrics: dict[str, dict[str, np.ndarray]], seed: int = 0, groups: list[str] | None = None
              ) -> dict[str, Any]:
    """Per model and metric mean ± se; paired comparisons (cluster bootstrap over ``groups`` when given)."""
    metrics = {k: {m: np.asarray(v, dtype=np.float64) for m, v in d.items()} for k, d in metrics.items()}
    g = np.asarray(groups) if groups is not None else None
    rows = {name: {m: mean_se(v[np.isfinite(v)]) for m, v in d.items()} for name, d in metrics.items()}
    comps = {}
    for a, b in COMPARISONS:
        if a not in metrics or b not in metrics:
            continue
        comps[f"{a}-{b}"] = {}
        for m in METRICS:
            va, vb = metrics[a][m], metrics[b][m]
            ok = np.isfinite(va) & np.isfinite(vb)
            comps[f"{a}-{b}"][m] = paired_comparison(va[ok], vb[ok], HIGHER_IS_BETTER[m], seed=seed,
                                                     groups=g[ok] if g is not None else None)
    return {"rows": rows, "comparisons": comps}


def write_picture(path: Path, pairs: dict, images: dict[str, np.ndarray], count: int) -> None:
    """Rows = test pairs; columns person | garment | tutor | WUTON | ablation | PF-AFN | ground truth."""
    from PIL import Image, ImageDraw

    cols = ["person", "garment", "tutor", "wuton", "ablation", "pfafn", "target"]
    titles = ["person", "garment", "tutor", "WUTON", "ablation", "PF-AFN", "truth"]
    n = min(count, len(pairs["keys"]))
    h, w = pairs["person"].shape[1:3]
    gap, head = 2, 14
    sheet = Image.new("RGB", (len(cols) * (w + gap) - gap, head + n * (h + gap) - gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles):
        draw.text((c * (w + gap) + 2, 1), title, fill=(0, 0, 0))
    for r in range(n):
        for c, col in enumerate(cols):
            img = pairs[col][r] if col in ("person", "garment", "target") else images[col][r]
            sheet.paste(Image.fromarray(np.asarray(img, np.uint8)), (c * (w + gap), head + r * (h + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def evaluate(data: str, checkpoints: dict[str, str], *, height: int, width: int, limit: int, seed: int = 0,
             picture: Path | None = None, picture_rows: int = 6, torch_threads: int = 0) -> dict[str, Any]:
    """Score the checkpoints (``tutor`` and students by name) on the first ``limit`` ground-truth pairs of the
    dataset root ``data``: ``eval_pairs``, ``eval_keys``, ``rows`` (per model and metric: mean, se, n),
    ``comparisons`` (``"pfafn-<other>"`` per metric), ``per_pair`` and ``picture`` (written when given)."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    pairs = load_eval_pairs(data, height, width, limit)
    result = run_models(checkpoints, pairs)
    summary = summarize(result["metrics"], seed=seed, groups=[k.split("__")[0] for k in pairs["keys"]])
    if picture is not None:
        write_picture(Path(picture), pairs, result["images"], picture_rows)
        picture = Path(picture).resolve()
    return {
        "eval_pairs": len(pairs["keys"]),
        "eval_keys": pairs["keys"],
        "eval_pairs_dropped": pairs["dropped"],
        **summary,
        "per_pair": {k: {m: [round(float(x), 6) for x in v] for m, v in d.items()}
                     for k, d in result["metrics"].items()},
        "picture": (str(picture.relative_to(ROOT)) if picture.is_relative_to(ROOT) else str(picture))
        if picture is not None else None,
    }


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline


def _stage_config(cls, stage_presets: dict, spec: dict, explicit: dict):
    from pipelines.core.config import build_config, deep_merge

    preset = deep_merge(copy.deepcopy(stage_presets[spec["base"]]), spec.get("set", {}))
    return build_config(cls, preset=preset, explicit=explicit)


def _noise_tag(noise: float) -> str:
    return f"{noise:.2f}".replace(".", "p")


def run_level(noise: float, preset: dict, work: Path, seed: int, doc_img: Path | None) -> dict[str, Any]:
    from pipelines.stages import distill, generate_synthetic, train_tutor, tutor_inference

    level_dir = work / f"noise_{_noise_tag(noise)}"
    times: dict[str, float] = {}
    h, w = preset["height"], preset["width"]

    t0 = time.time()
    world = generate_synthetic.run(generate_synthetic.SyntheticDatasetConfig(
        output=str(level_dir / "world"), persons=preset["persons"], garments=preset["garments"], height=h, width=w,
        seed=seed, parsing_noise=float(noise), ground_truth_pairs=preset["eval_pairs"],
        test_fraction=preset["test_fraction"], unpaired_per_model=preset["unpaired_per_model"], executor="local",
        workers=2))
    data = world["data"]
    times["world_s"] = time.time() - t0
    log.info("noise %.2f: world %s (%.0fs)", noise, data, times["world_s"])

    t0 = time.time()
    tutor_cfg = _stage_config(train_tutor.TutorConfig, train_tutor.PRESETS, preset["tutor"],
                              {"data": data, "output": str(level_dir / "tutor"), "height": h, "width": w,
                               "seed": seed})
    tutor = train_tutor.run(tutor_cfg)
    times["tutor_s"] = time.time() - t0
    log.info("noise %.2f: tutor %s (%.0fs) %s", noise, tutor["checkpoint"], times["tutor_s"], tutor["final_metrics"])

    t0 = time.time()
    fakes = tutor_inference.run(tutor_inference.TutorInferenceConfig(
        data=data, tutor=tutor["checkpoint"], output=str(level_dir / "fakes"), k=preset["k"], seed=seed, height=h,
        width=w, batch_size=8, chunk_size=16, precision="fp32", channels_last=False, device=preset["device"],
        torch_threads=preset["torch_threads"], png_compress_level=1, gallery_size=8))
    times["fakes_s"] = time.time() - t0
    if not fakes["fakes_written"] and not fakes["fakes_skipped"]:
        raise RuntimeError(f"tutor inference wrote no fakes: {fakes}")
    log.info("noise %.2f: %d fakes (%.0fs)", noise, fakes["fakes_written"] + fakes["fakes_skipped"], times["fakes_s"])

    students = {}
    for name, switch in STUDENTS.items():
        t0 = time.time()
        spec = copy.deepcopy(preset["distill"])
        spec["set"] = {**spec.get("set", {}), **switch}
        cfg = _stage_config(distill.DistillConfig, distill.PRESETS, spec,
                            {"data": data, "fakes": str(level_dir / "fakes"), "tutor": tutor["checkpoint"],
                             "output": str(level_dir / f"student_{name}"), "height": h, "width": w, "seed": seed})
        students[name] = distill.run(cfg)
        times[f"student_{name}_s"] = time.time() - t0
        log.info("noise %.2f: student %s (%.0fs) %s", noise, name, times[f"student_{name}_s"],
                 students[name]["final_metrics"])

    t0 = time.time()
    ckpts = {"tutor": tutor["checkpoint"], **{k: v["student_checkpoint"] for k, v in students.items()}}
    picture = doc_img / f"claim_{_noise_tag(noise)}.png" if doc_img is not None else None
    evaluation = evaluate(data, ckpts, height=h, width=w, limit=preset["eval_pairs"], seed=seed, picture=picture,
                          picture_rows=preset["pictures"], torch_threads=preset["torch_threads"])
    times["eval_s"] = time.time() - t0
    return {
        "parsing_noise": float(noise),
        "data": data,
        "train_pairs": world["train_pairs"],
        "fakes": fakes["fakes_written"] + fakes["fakes_skipped"],
        "checkpoints": ckpts,
        "versions": {"tutor": tutor["version"], **{k: v["version"] for k, v in students.items()}},
        "steps": {"tutor": tutor["steps"], **{k: v["steps"] for k, v in students.items()}},
        "stage_final_metrics": {"tutor": tutor["final_metrics"],
                                **{k: v["final_metrics"] for k, v in students.items()}},
        "kd_enabled": {k: v["distill_enabled"] for k, v in students.items()},
        "supervision": {k: v["supervision"] for k, v in students.items()},
        **evaluation,
        "wall_s": {k: round(v, 1) for k, v in times.items()},
    }


def machine_info() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "cuda": torch.cuda.is_available()}
    info["cpu_model"] = cpu_name()
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _resolved_settings(preset_name: str, preset: dict, noise: list[float], seed: int) -> dict:
    from pipelines.stages import distill, train_tutor
    from pipelines.core.config import to_dict

    tut = _stage_config(train_tutor.TutorConfig, train_tutor.PRESETS, preset["tutor"],
                        {"data": "x", "output": "x", "height": preset["height"], "width": preset["width"]})
    dis = _stage_config(distill.DistillConfig, distill.PRESETS, preset["distill"],
                        {"data": "x", "fakes": "x", "tutor": "x", "output": "x", "height": preset["height"],
                         "width": preset["width"]})
    keep = ("height", "width", "batch_size", "widths", "loss", "warp", "e2e", "warp_lr_scale", "train",
            "freeze_epochs", "skin_switch_epoch", "ngf")
    td, dd = to_dict(tut), to_dict(dis)
    return {
        "preset": preset_name, "seed": seed, "parsing_noise": noise,
        "world": {k: preset[k] for k in ("height", "width", "persons", "garments", "test_fraction",
                                         "unpaired_per_model")},
        "fakes_per_person": preset["k"], "eval_pairs_requested": preset["eval_pairs"],
        "tutor": {k: td[k] for k in keep if k in td},
        "student": {k: dd[k] for k in keep if k in dd},
        "students": STUDENTS,
    }


def run_claim(preset_name: str, *, noise: list[float] | None = None, work_dir: str | None = None, seed: int = 0,
              write_docs: bool = False, overrides: dict | None = None) -> dict[str, Any]:
    from pipelines.core.config import deep_merge

    preset = deep_merge(copy.deepcopy(PRESETS[preset_name]), overrides or {})
    levels = [float(x) for x in (noise if noise is not None else preset["noise"])]
    work = Path(work_dir or f"/tmp/reproduce_claim/{preset_name}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "reproduce_claim", "schema_version": SCHEMA_VERSION,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": _resolved_settings(preset_name, preset, levels, seed), "machine": machine_info(),
        "work_dir": str(work), "models": list(MODELS), "metrics": list(METRICS),
        "higher_is_better": HIGHER_IS_BETTER, "levels": [],
    }
    doc_img = ROOT / "docs" / "img" if write_docs else work / "img"
    for noise_level in levels:
        result["levels"].append(run_level(noise_level, preset, work, seed, doc_img))
        (work / "claim_partial.json").write_text(json.dumps(result, indent=1))
    result["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result["wall_s"] = round(time.time() - started, 1)
    try:
        result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    (work / "claim.json").write_text(json.dumps(result, indent=1))
    if write_docs:
        write_results_doc(result, ROOT / "docs" / "results.md")
    return result


# ----------------------------------------------------------------------------------------------------------------------
# docs/results.md


def _fmt(stat: dict, metric: str) -> str:
    digits = 2 if "psnr" in metric else 4 if "ssim" in metric else 4
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def _fmt_cmp(c: dict, metric: str) -> str:
    digits = 2 if "psnr" in metric else 4
    lo, hi = c["ci95"]
    mark = {"better": "**better**", "worse": "*worse*", "no significant difference": "n.s."}[c["verdict"]]
    return (f"{c['mean_diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] {mark}, "
            f"{c['wins']}/{c['losses']} wins/losses, p={c['sign_test_p']:.2g}")


def claim_status(level: dict) -> dict[str, str]:
    """Per comparison: 'holds' (PF-AFN significantly better on whole-image SSIM and not worse on PSNR or L1),
    'contradicted' (significantly worse on SSIM), or 'not shown'."""
    out = {}
    for key, comp in level["comparisons"].items():
        v = {m: comp[m]["verdict"] for m in ("ssim", "psnr", "l1")}
        if v["ssim"] == "better" and "worse" not in (v["psnr"], v["l1"]):
            out[key] = "holds"
        elif v["ssim"] == "worse":
            out[key] = "contradicted"
        else:
            out[key] = "not shown"
    return out


def render_results_doc(result: dict) -> str:
    s = result["settings"]
    m = result["machine"]
    L: list[str] = []
    L.append("# Results: PF-AFN's central claim on the synthetic world")
    L.append("")
    L.append("*Generated by `python -m benchmarks.reproduce_claim --preset "
             f"{s['preset']} --write-docs` (run {result['started_at']} → {result.get('finished_at')}, "
             f"{result['wall_s'] / 60:.1f} min). The numbers below are this run's; rerun to regenerate."
             + (f" Statistics recomputed from its per-pair numbers with `--docs-from` ({result['stats_recomputed']})."
                if result.get("stats_recomputed") else "") + "*")
    L.append("")
    L.append("**The claim** (Ge et al., CVPR 2021): the parser-free student trained *teacher-tutor-student* — input = the "
             "tutor's fake image of a person in another garment, target = the real photo, plus adjustable "
             "appearance-flow distillation — beats (1) its parser-based tutor and (2) a WUTON-style parser-free "
             "student trained to reproduce the tutor's outputs, because real photos supervise it; (3) the same "
             "student without distillation shows what distillation adds. VITON has no ground truth for an unpaired "
             "try-on, so the paper argues with FID; the synthetic world renders model A wearing garment B exactly, so "
             "here the four models are scored against the true image.")
    L.append("")
    L.append("## Setup")
    L.append("")
    w = s["world"]
    tut, stu = s["tutor"], s["student"]
    L.append(f"- World: {w['persons']} models, {w['garments']} garments at {w['height']}×{w['width']}, "
             f"{round(w['persons'] * w['test_fraction'])} test models (never seen in training), seed {s['seed']}; "
             f"parsing noise levels {', '.join(str(x) for x in s['parsing_noise'])} (the noisy parsing is what the "
             "tutor is trained on and what it is given at test time; DensePose and pose are exact).")
    L.append(f"- Tutor: `pipelines.stages.train_tutor`, widths {tut['widths']}, batch {tut['batch_size']}, "
             f"warp {tut['warp']['niter']}+{tut['warp']['niter_decay']} epochs, e2e "
             f"{tut['e2e']['niter']}+{tut['e2e']['niter_decay']} epochs, lr {tut['warp']['lr']:g}/{tut['e2e']['lr']:g}, "
             f"VGG {tut['loss']['vgg']}.")
    L.append(f"- Fakes: `pipelines.stages.tutor_inference`, {s['fakes_per_person']} per training person "
             "(the tutor with `cloth_region=\"warped\"`, another garment).")
    L.append(f"- Students: `pipelines.stages.distill`, same seed, data and budget: batch {stu['batch_size']}, warp "
             f"{stu['warp']['niter']}+{stu['warp']['niter_decay']} epochs (first {stu['freeze_epochs']} train only "
             f"`cond_*`/`netRefine`), e2e {stu['e2e']['niter']}+{stu['e2e']['niter_decay']} epochs, lr "
             f"{stu['warp']['lr']:g}/{stu['e2e']['lr']:g}, VGG {stu['loss']['vgg']}, warp initialised from the tutor. "
             "`pfafn`: supervision=real, distillation on; `wuton`: supervision=tutor (the tutor's paired try-on "
             "replaces the real photo as every target); `ablation`: supervision=real, distillation off.")
    L.append("- Evaluation (in-process): the first ground-truth pairs of `ground_truth.parquet` (test model × a "
             "garment no training model wears) against the exact render. Students get (photo, garment, garment "
             "mask) through the published test pipeline; the tutor gets the test model's noisy parsing, DensePose "
             "and pose. Whole image: SSIM, PSNR (`pfafn.metrics`, [0, 1]), L1; garment region (the exact garment "
             "mask of the ground truth): L1, PSNR over its pixels, SSIM on its bounding box. `input photo` = the "
             "unchanged person photo (no try-on), a floor any try-on must beat on the garment region.")
    L.append("- Statistics: mean ± standard error over pairs; comparisons are per-pair differences PF-AFN − X with a "
             "seeded percentile-bootstrap 95 % CI of the mean (10,000 resamples of *test models*, since the pairs of "
             "one person are not independent) and a two-sided exact sign test on the per-model mean differences. "
             "'better'/'worse' = the CI excludes 0; wins/losses count pairs.")
    L.append(f"- Machine: {m.get('cpu_model', m.get('processor'))}, {m['cpus']} cores shared with other jobs "
             f"(load average {m.get('loadavg_start')} at the start, {m.get('loadavg_end')} at the end), "
             f"torch {m['torch']}, no GPU.")
    L.append("")
    L.append("## Results")
    for level in result["levels"]:
        L.append("")
        L.append(f"### Parsing noise {level['parsing_noise']} — {level['eval_pairs']} unpaired test pairs")
        L.append("")
        L.append("| model | SSIM ↑ | PSNR dB ↑ | L1 ↓ | garment SSIM ↑ | garment PSNR ↑ | garment L1 ↓ |")
        L.append("|---|---|---|---|---|---|---|")
        for name in list(MODELS) + ["input_photo"]:
            row = level["rows"][name]
            L.append(f"| {MODEL_LABELS[name]} | " + " | ".join(_fmt(row[k], k) for k in METRICS) + " |")
        L.append("")
        L.append("Paired differences PF-AFN − X (mean [95 % CI], verdict, wins/losses, sign-test p):")
        L.append("")
        L.append("| comparison | SSIM | PSNR dB | L1 | garment SSIM | garment PSNR dB | garment L1 |")
        L.append("|---|---|---|---|---|---|---|")
        for key, comp in level["comparisons"].items():
            a, b = key.split("-")
            L.append(f"| PF-AFN − {b} | " + " | ".join(_fmt_cmp(comp[k], k) for k in METRICS) + " |")
        L.append("")
        st = level["steps"]
        steps = lambda d: " + ".join(f"{v} {k.split('_')[-1]}" for k, v in d.items())  # noqa: E731
        L.append(f"Training steps (batch {s['tutor']['batch_size']} / {s['student']['batch_size']}): tutor "
                 f"{steps(st['tutor'])}; each student {steps(st['pfafn'])} on {level.get('fakes', '?')} fakes. "
                 "Stage wall times (s): " + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in level["wall_s"].items()) + ".")
        if level.get("picture"):
            rel = os.path.relpath(ROOT / level["picture"], ROOT / "docs") if not os.path.isabs(level["picture"]) \
                else level["picture"]
            L.append("")
            L.append(f"![examples at noise {level['parsing_noise']}]({rel})")
            L.append("")
            L.append("*Rows: test pairs; columns: person | garment | tutor | WUTON | ablation | PF-AFN | ground "
                     "truth.*")
    L.append("")
    L.append("## Does the claim hold here?")
    L.append("")
    L.append("Criterion: PF-AFN significantly better on whole-image SSIM and not significantly worse on PSNR or L1 "
             "('holds'); significantly worse on SSIM ('contradicted'); otherwise 'not shown' at this sample size.")
    L.append("")
    L.append("| parsing noise | vs tutor (1) | vs WUTON (2) | vs no distillation (3) |")
    L.append("|---|---|---|---|")
    for level in result["levels"]:
        cs = claim_status(level)
        L.append(f"| {level['parsing_noise']} | {cs.get('pfafn-tutor')} | {cs.get('pfafn-wuton')} | "
                 f"{cs.get('pfafn-ablation')} |")
    L.append("")
    L.append(DISCUSSION_MARKER)
    L.append("")
    return "\n".join(L)


DISCUSSION_MARKER = "<!-- discussion: written by hand from this run's numbers; kept when the doc is regenerated -->"


def write_results_doc(result: dict, path: Path) -> None:
    """Write the generated part; a hand-written discussion after :data:`DISCUSSION_MARKER` is kept."""
    text = render_results_doc(result)
    if path.exists():
        old = path.read_text()
        if DISCUSSION_MARKER in old:
            text += old.split(DISCUSSION_MARKER, 1)[1].lstrip("\n")
    path.write_text(text if text.endswith("\n") else text + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--noise", help="comma-separated parsing-noise levels (default: the preset's)")
    p.add_argument("--work-dir", help="where the worlds, checkpoints and fakes go (default /tmp/reproduce_claim/"
                                      "<preset>); re-running on it resumes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-docs", action="store_true", help="write docs/results.md and docs/img/claim_*.png")
    p.add_argument("--docs-from", help="only (re)write docs/results.md from a saved result JSON (statistics are "
                                       "recomputed from its per-pair numbers)")
    p.add_argument("--save-json", help="with --docs-from: also write the recomputed result JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.docs_from:
        result = json.loads(Path(args.docs_from).read_text())
        for level in result["levels"]:  # statistics from the per-pair numbers, with this version's code
            level.update(summarize(level["per_pair"], seed=result["settings"]["seed"],
                                   groups=[k.split("__")[0] for k in level["eval_keys"]]))
        result["stats_recomputed"] = "cluster bootstrap over test models, sign test over test models"
        write_results_doc(result, ROOT / "docs" / "results.md")
        if args.save_json:
            Path(args.save_json).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({"wrote": "docs/results.md", "from": args.docs_from, "json": args.save_json}))
        return 0
    noise = [float(x) for x in args.noise.split(",")] if args.noise else None
    result = run_claim(args.preset, noise=noise, work_dir=args.work_dir, seed=args.seed, write_docs=args.write_docs)
    compact = {k: v for k, v in result.items() if k != "levels"}
    compact["levels"] = [{k: v for k, v in lv.items() if k not in ("per_pair", "eval_keys")} for lv in result["levels"]]
    compact["result_json"] = str(Path(result["work_dir"]) / "claim.json")
    print(json.dumps(compact, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
