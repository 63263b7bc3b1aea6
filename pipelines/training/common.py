"""Config pieces and helpers both training stages share: network widths, the VGG loss source, metrics, summaries."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipelines import storage
from pipelines.errors import StageError

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
T = TypeVar("T")


@dataclass
class WidthsConfig:
    """``pfafn.nn.NetworkWidths`` as config (defaults = the published widths)."""

    encoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256, 256])
    fpn_dim: int = 256
    flow_channels: list[int] = field(default_factory=lambda: [128, 64, 32])
    ngf: int = 64

    def build(self):
        from pfafn.nn import NetworkWidths

        return NetworkWidths(encoder_channels=tuple(self.encoder_channels), fpn_dim=self.fpn_dim,
                             flow_channels=tuple(self.flow_channels), ngf=self.ngf)


TINY_WIDTHS = {"encoder_channels": [8, 16, 32, 32, 32], "fpn_dim": 16, "flow_channels": [16, 8, 8], "ngf": 8}
CPU_WIDTHS = {"encoder_channels": [16, 32, 64, 64, 64], "fpn_dim": 64, "flow_channels": [32, 16, 16], "ngf": 16}


@dataclass
class LossConfig:
    """``vgg``: ``off`` (no VGG terms), ``torchvision`` (ImageNet VGG19 from the torch hub cache, as published),
    ``random`` (random weights: exercises the cost and code path only; tests/benchmarks) or a path / s3:// URI of a
    VGG19 state dict. ``allow_download`` lets ``torchvision`` fetch the file on a machine with internet access."""

    vgg: str | bool = "off"  # YAML reads a bare off/false as False: both mean "off"
    allow_download: bool = False


VGG_OFF = ("", "off", "none", "false")
VGG_KEYWORDS = VGG_OFF + ("random", "torchvision")  # loss.vgg values that are not a weights path


def with_absolute_paths(config: T, *fields: str) -> T:
    """``pipelines.config.absolute_paths`` plus a ``loss.vgg`` weights path."""
    from pipelines.config import absolute_paths

    config = absolute_paths(config, *fields)
    loss = getattr(config, "loss", None)
    if isinstance(loss, LossConfig) and isinstance(loss.vgg, str) and loss.vgg.lower() not in VGG_KEYWORDS:
        config = dataclasses.replace(config, loss=dataclasses.replace(loss, vgg=storage.absolute_uri(loss.vgg)))
    return config


def build_vgg(loss: LossConfig, device):
    """The VGG loss module on ``device`` or None; raises ``VGGWeightsUnavailable`` with instructions."""
    from pfafn.losses import VGGLoss, random_vgg19_features_state_dict

    if loss.vgg is False or str(loss.vgg).lower() in VGG_OFF:
        return None
    if loss.vgg == "random":
        return VGGLoss.from_state_dict(random_vgg19_features_state_dict(0)).to(device)
    return VGGLoss.from_source(loss.vgg, allow_download=loss.allow_download, config_key="loss.vgg").to(device)


def check_vgg_available(loss: LossConfig) -> None:
    """Fail fast on the driver (one clear line) when the configured VGG weights cannot be had."""
    from pfafn.losses import VGGWeightsUnavailable

    try:
        build_vgg(loss, "cpu")
    except VGGWeightsUnavailable as exc:
        raise StageError(str(exc)) from None


class MetricSums:
    """Running means of per-sample SSIM / PSNR (images in [-1, 1]; PSNR of identical images capped at 100 dB)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ssim = 0.0
        self.psnr = 0.0
        self.n = 0

    def add(self, pred, target) -> None:
        import torch

        from pfafn.metrics import psnr, ssim, to_unit_range

        p = to_unit_range(pred.float()).clamp(0, 1)
        t = to_unit_range(target.float()).clamp(0, 1)
        self.ssim += float(ssim(p, t).sum())
        self.psnr += float(torch.clamp(psnr(p, t), max=100.0).sum())
        self.n += int(p.shape[0])

    def result(self) -> dict[str, float]:
        if not self.n:
            return {}
        return {f"{self.prefix}_ssim": self.ssim / self.n, f"{self.prefix}_psnr": self.psnr / self.n,
                f"{self.prefix}_samples": self.n}


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_summary(output: str) -> dict | None:
    uri = storage.join_uri(output, SUMMARY_NAME)
    return storage.read_json(uri) if storage.exists(uri) else None


def require(value: str, flag: str, stage: str) -> None:
    if not value:
        raise StageError(f"{stage}: --{flag} is required")


def run_summary(stage: str, run_id: str, config, phases: dict, *, train_samples: int, val_samples: int,
                error_rows: int, errors_uri: str, started: float, final_metrics: dict, **extra: Any) -> dict:
    """The summary both training stages print and write: stage-specific ``extra`` keys plus the common ones."""
    import time

    s = config.train
    summary = {"stage": stage, "run_id": run_id, "data": config.data, "output": config.output, **extra}
    summary.update({
        "steps": {k: v["steps"] for k, v in phases.items()},
        "trained_steps": sum(v.get("trained_steps", 0) for v in phases.values()),
        "skipped": all(v.get("skipped") for v in phases.values()),
        "train_samples": train_samples,
        "val_samples": val_samples,
        "error_rows": error_rows,
        "errors": errors_uri if error_rows else None,
        "final_metrics": final_metrics,
        "phases": {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in phases.items()},
        "num_workers": s.num_workers,
        "use_gpu": s.use_gpu,
        "finished_at": utc_now(),
        "wall_s": round(time.time() - started, 3),
    })
    return summary


def adam(params, lr: float):
    """Adam with the published betas (0.5, 0.999)."""
    import torch

    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


def e2e_optimizers(net, lr: float, warp_lr_scale: float) -> dict:
    """The end-to-end phases' optimizers: the warp at ``warp_lr_scale`` × lr, the generator at lr (reference §4.1)."""
    return {"warp": (adam(net.warp.parameters(), lr * warp_lr_scale), warp_lr_scale),
            "gen": (adam(net.gen.parameters(), lr), 1.0)}
