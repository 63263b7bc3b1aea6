"""Student training-step speed on one device: AMP (bf16 / fp16) vs fp32, channels_last on/off, batch 4/8/16.

The exact step ``pipelines.stages.distill`` runs in PF end-to-end (frozen tutor's paired + unpaired warps, student warp +
generator forward/backward, warp loss + adjustable KD + gen_PF with a VGG19 of random weights, two Adam steps) at
256×192 with the published widths, on random uint8 inputs (no data loading). Prints one JSON object per run and a
final JSON summary line: samples/s, ms/step and peak device memory.

    python -m benchmarks.train_gpu                          # CUDA: precisions × channels_last × batch sizes
    python -m benchmarks.train_gpu --device cpu --quick     # smoke check on a CPU (fp32 + bf16, batch 2)
"""
from __future__ import annotations

import argparse
import json
import platform
import time


def _batch(b: int, h: int, w: int, gen):
    import torch

    def img():
        return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=gen)

    def mask():
        m = torch.zeros(b, h, w, dtype=torch.uint8)
        m[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
        return m

    parsing = torch.zeros(b, h, w, dtype=torch.uint8)
    parsing[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 4
    parsing[:, : h // 4] = 12
    densepose = torch.randint(0, 25, (b, h, w), dtype=torch.uint8, generator=gen)
    kp = torch.rand(b, 18, 3, generator=gen) * torch.tensor([w, h, 1.0])
    return {"person": img(), "keypoints": kp, "parsing": parsing, "densepose": densepose, "garment": img(),
            "garment_mask": mask(), "fake": img(), "fake_garment": img(), "fake_garment_mask": mask()}


def run_one(device: str, precision: str, channels_last: bool, batch: int, steps: int, warmup: int, h: int, w: int):
    import torch

    from pfafn.losses import VGGLoss, random_vgg19_features_state_dict
    from pfafn.nn import NetworkWidths
    from pfafn.tutor import TutorModel
    from pipelines.stages.distill import DistillConfig, StudentE2ETask, _nn

    dev = torch.device(device)
    widths = NetworkWidths()
    torch.manual_seed(0)
    student = _nn()(widths, widths.ngf).to(dev).train()
    tutor = TutorModel(widths).to(dev).eval().requires_grad_(False)
    vgg = VGGLoss.from_state_dict(random_vgg19_features_state_dict(0)).to(dev)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
        tutor = tutor.to(memory_format=torch.channels_last)
        vgg = vgg.to(memory_format=torch.channels_last)
    task = StudentE2ETask(DistillConfig(), widths, widths.ngf, has_gt=False)
    nets = {"student": student, "tutor": tutor, "vgg": vgg}
    opts = [torch.optim.Adam(student.warp.parameters(), lr=1e-5, betas=(0.5, 0.999)),
            torch.optim.Adam(student.gen.parameters(), lr=5e-5, betas=(0.5, 0.999))]
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16" and dev.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    batch_t = {k: v.to(dev) for k, v in _batch(batch, h, w, gen).items()}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        torch.cuda.synchronize(dev)
    times = []
    loss_value = None
    for i in range(warmup + steps):
        t = time.perf_counter()
        for o in opts:
            o.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = task.step(nets, batch_t, 0, dev)
        scaler.scale(loss).backward()
        for o in opts:
            scaler.step(o)
        scaler.update()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t)
        loss_value = float(loss.detach())
    ms = 1000 * sum(times) / len(times)
    out = {"device": device, "precision": precision, "channels_last": channels_last, "batch_size": batch,
           "steps": steps, "ms_per_step": round(ms, 2), "samples_per_s": round(batch * 1000 / ms, 3),
           "loss": loss_value, "finite": bool(torch.isfinite(torch.tensor(loss_value)))}
    if dev.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
    return out


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="CPU smoke check: batch 2, fp32 + bf16, 1 step, no warm-up")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--channels-last", choices=["on", "off", "both"], default="both")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    args = parser.parse_args(argv)
    if args.quick:
        args.precisions, args.batch_sizes, args.steps, args.warmup = ["fp32", "bf16"], [2], 1, 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available; use --device cpu")
    cl = {"on": [True], "off": [False], "both": [False, True]}[args.channels_last]
    results = []
    for precision in args.precisions:
        for channels_last in cl:
            for b in args.batch_sizes:
                try:
                    r = run_one(args.device, precision, channels_last, b, args.steps, args.warmup, args.height,
                                args.width)
                except torch.cuda.OutOfMemoryError:
                    r = {"precision": precision, "channels_last": channels_last, "batch_size": b, "error": "OOM"}
                    torch.cuda.empty_cache()
                print(json.dumps(r), flush=True)
                results.append(r)
    base = {(r["batch_size"], r["channels_last"]): r["samples_per_s"] for r in results
            if r.get("precision") == "fp32" and "samples_per_s" in r}
    for r in results:
        ref = base.get((r["batch_size"], r["channels_last"]))
        if ref and "samples_per_s" in r:
            r["speedup_vs_fp32"] = round(r["samples_per_s"] / ref, 3)
    info = {"benchmark": "train_gpu", "device": args.device, "height": args.height, "width": args.width,
            "torch": torch.__version__, "platform": platform.platform()}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps({**info, "results": results}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
