"""What the phase tasks of both training stages use: the VGG loss, the published optimizers, paired metrics."""
from __future__ import annotations

import logging

from pipelines.core.errors import StageError
from pipelines.training.config import LossConfig

log = logging.getLogger(__name__)


def build_vgg(loss: LossConfig, device):
    """The VGG loss module on ``device`` or None; raises ``VGGWeightsUnavailable`` with instructions."""
    from pfafn.losses import VGGLoss, random_vgg19_features_state_dict

    if loss.off:
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


def adam(params, lr: float):
    """Adam with the published betas (``--beta1 0.5`` of ``PF-AFN_train/options/train_options.py``, 0.999)."""
    import torch

    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


def e2e_optimizers(net, lr: float, warp_lr_scale: float) -> dict:
    """The end-to-end phases' optimizers: the warp at ``warp_lr_scale`` × lr, the generator at lr
    (``optimizer_warp``/``optimizer_gen`` of ``train_PBAFN_e2e.py`` and ``train_PFAFN_e2e.py``: 0.2 × lr)."""
    return {"warp": (adam(net.warp.parameters(), lr * warp_lr_scale), warp_lr_scale),
            "gen": (adam(net.gen.parameters(), lr), 1.0)}


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


def eval_batches(val_iters: dict, name: str, batch_size: int):
    """The batches of validation set ``name`` (a Ray Data shard; rank 0 reads all of it)."""
    return val_iters[name].iter_torch_batches(batch_size=batch_size)
