"""Student-stage training throughput on Ray Train (CPU): samples/s per worker with 1 vs 2 workers.

Runs the real ``pipelines.stages.distill`` stage (decode tasks, frozen tutor, student PF end-to-end step, DDP over gloo) on a
synthetic dataset at 256×192 with the published network widths, and reads the steady-state rate that the training
loop reports with each checkpoint (``samples_per_s`` between the last two reports, i.e. excluding start-up and the
first step). Prints one JSON object (last stdout line).

    python -m benchmarks.train_throughput --quick            # batch 2, 4 e2e steps per configuration
    python -m benchmarks.train_throughput --workers 1 2 --steps 8 --batch-size 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from benchmarks.machine import cpu_name


def _measure(inputs: dict, out: str, workers: int, steps: int, batch: int, threads: int, height: int,
             width: int) -> dict:
    from pipelines.core.config import build_config
    from pipelines.stages.distill import DistillConfig, run

    every = max(1, steps // 2)
    cfg = build_config(DistillConfig, overrides=[
        f"height={height}", f"width={width}", f"batch_size={batch}", "loss.vgg=off",
        "warp.niter=1", "warp.niter_decay=0", "warp.max_steps=1",
        "e2e.niter=100", "e2e.niter_decay=0", f"e2e.max_steps={steps}",
        "val_samples=0", "gt_samples=0",
        f"train.num_workers={workers}", f"train.cpus_per_worker={max(0.25, 1.5 / workers)}",
        "train.decode_cpus=0.25", f"train.torch_threads={threads}", f"train.checkpoint_every_steps={every}",
    ], explicit={**inputs, "output": out})
    t = time.time()
    summary = run(cfg)
    e2e = summary["phases"]["student_e2e"]
    reports = [m for m in e2e["epoch_metrics"]]
    import json as _json

    from pipelines.core import storage

    record = storage.read_json(storage.join_uri(out, "phases", "student_e2e.json"))
    rate = None
    # steady state: the rate the loop measured over the last reporting interval
    ray_dir = storage.join_uri(out, "ray", "student_e2e")
    states = sorted(u for u in storage.list_files(ray_dir, suffix="state.json"))
    if states:
        last = _json.loads(storage.read_bytes(states[-1]))
        rate = last["metrics"].get("samples_per_s")
    return {"workers": workers, "batch_size": batch, "steps": record["steps"], "torch_threads": threads,
            "samples_per_s_total": rate, "samples_per_s_per_worker": (rate / workers) if rate else None,
            "stage_wall_s": round(time.time() - t, 1), "epoch_reports": len(reports)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, 4 steps (a few minutes on 2 CPUs)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: cores / workers)")
    parser.add_argument("--output", default="", help="keep the runs here (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size = 4, 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    from pfafn.checkpoint import save_checkpoint
    from pfafn.tutor import TutorModel
    from pipelines.core.ray_env import ensure_ray
    from pipelines.stages import generate_synthetic, tutor_inference

    base = args.output or tempfile.mkdtemp(prefix="train-throughput-")
    n = max(8, args.batch_size * max(args.workers) * 2 + 2)
    t0 = time.time()
    data = generate_synthetic.run(generate_synthetic.SyntheticDatasetConfig(
        output=os.path.join(base, "root"), persons=n, garments=n, height=args.height, width=args.width,
        ground_truth_pairs=2, test_fraction=2 / n, executor="local"))["data"]
    torch.manual_seed(0)
    tutor = TutorModel()  # published widths, random weights (the rate does not depend on the values)
    tutor_uri = os.path.join(base, "tutor.pt")
    save_checkpoint(tutor_uri, warp=tutor.warp, gen=tutor.gen, kind="tutor")
    ensure_ray()
    fakes = tutor_inference.run(tutor_inference.TutorInferenceConfig(
        data=data, tutor=tutor_uri, output=os.path.join(base, "fakes"), height=args.height, width=args.width,
        precision="bf16", gallery_size=0))["fakes"]
    setup_s = time.time() - t0
    cores = os.cpu_count() or 1
    results = []
    for w in args.workers:
        threads = args.threads or max(1, cores // w)
        results.append(_measure({"data": data, "fakes": fakes, "tutor": tutor_uri}, os.path.join(base, f"w{w}"), w,
                                args.steps, args.batch_size, threads, args.height, args.width))
    base_rate = next((r["samples_per_s_total"] for r in results if r["workers"] == 1), None)
    for r in results:
        if base_rate and r["samples_per_s_total"]:
            r["speedup_vs_1_worker"] = round(r["samples_per_s_total"] / base_rate, 3)
            r["scaling_efficiency"] = round(r["samples_per_s_total"] / (base_rate * r["workers"]), 3)
    out = {
        "benchmark": "train_throughput", "stage": "distill (student PF end-to-end step + frozen tutor)",
        "height": args.height, "width": args.width, "widths": "published", "vgg": "off", "device": "cpu",
        "machine": {"cpus": cores, "platform": platform.platform(), "processor": cpu_name(),
                    "load_avg": os.getloadavg()},
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
        "setup_s": round(setup_s, 1), "results": results,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
