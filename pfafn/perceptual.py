"""Learned perceptual metrics, pure PyTorch / torchvision (+ scipy for FID): LPIPS and FID's Inception features.

No weights ship with this project and none can be downloaded where it is built: both networks are built *empty* and
filled from state dicts the caller supplies (``pipelines.stages.evaluate`` reads them from the configured ``lpips_weights``
/ ``fid_weights`` URIs with ``torch.load(weights_only=True)``).

Convention as in :mod:`pfafn.metrics`: images are float B×3×H×W in **[0, 1]**.

LPIPS (Zhang et al. 2018, v0.1)
    ``d(x, y) = Σ_l mean_hw( w_l · (f̂_l(x) − f̂_l(y))² )`` over five layers of AlexNet or VGG16 (``f̂`` = features
    unit-normalised along channels, ε = 1e-10), after the LPIPS scaling layer on [-1, 1] inputs; ``w_l`` are the
    learned 1×1 "lin" layers. Module names equal the ``lpips`` package's (``scaling_layer``, ``net.slice1..5`` with
    the torchvision layer indices, ``lin0..4.model.1.weight``), so a full ``lpips.LPIPS().state_dict()`` loads as is;
    the official lin-only files (``weights/v0.1/alex.pth``) load together with a torchvision ``alexnet`` /
    ``vgg16`` state dict for the backbone (``features.N.*``). The lin weights are clamped to ≥ 0 when loaded (the
    official training clamps them, so this is a no-op for published weights); then d ≥ 0 and d(x, x) = 0.

FID (Heusel et al. 2017)
    2048-d pool3 features of torchvision's Inception-v3 (``torchvision.models.inception_v3`` layout, e.g. the
    ``IMAGENET1K_V1`` state dict; ``AuxLogits.*`` and ``fc.*`` keys are ignored), images resized to 299×299
    (bilinear) and mapped to [-1, 1]; ``FID = |μ1 − μ2|² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½)`` with ``scipy.linalg.sqrtm``
    (with fewer samples than dimensions, the exact low-rank form of :func:`fid_from_features` instead).
    Values from these torchvision weights are **not** comparable to the TF-Inception FID of papers (pytorch-fid /
    clean-fid use a different port of the network); compare runs measured with the same weights only.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LPIPS",
    "LPIPS_CHANNELS",
    "build_lpips",
    "InceptionFeatures",
    "build_inception",
    "feature_statistics",
    "frechet_distance",
    "fid_from_features",
    "WeightsError",
]


class WeightsError(ValueError):
    """A state dict that does not fit the network (missing / unexpected / mis-shaped keys). One line."""


# ----------------------------------------------------------------------------------------------------------------------
# LPIPS

LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
# torchvision ``features`` index ranges of the five slices (as the lpips package cuts them)
_SLICES = {"alex": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)), "vgg": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))}


def _alexnet_features() -> list[nn.Module]:
    """torchvision ``alexnet().features`` (without building the classifier)."""
    return [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    ]


def _vgg16_features() -> list[nn.Module]:
    """torchvision ``vgg16().features`` (configuration "D", no batch norm)."""
    layers: list[nn.Module] = []
    channels = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)
    return layers


class _Backbone(nn.Module):
    def __init__(self, net: str) -> None:
        super().__init__()
        layers = _alexnet_features() if net == "alex" else _vgg16_features()
        for k, (a, b) in enumerate(_SLICES[net], start=1):
            self.add_module(f"slice{k}", nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(a, b))))

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for k in range(1, 6):
            x = getattr(self, f"slice{k}")(x)
            out.append(x)
        return out


class _ScalingLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class _NetLinLayer(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, stride=1, padding=0, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. ``forward(x, y)``: float B×3×H×W in [0, 1] → (B,) float32 distances (≥ 0)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in LPIPS_CHANNELS:
            raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_CHANNELS)}, got {net!r}")
        self.net_type = net
        self.scaling_layer = _ScalingLayer()
        self.net = _Backbone(net)
        for k, c in enumerate(LPIPS_CHANNELS[net]):
            self.add_module(f"lin{k}", _NetLinLayer(c))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected two B×3×H×W tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        fx = self.net(self.scaling_layer(x.float() * 2.0 - 1.0))
        fy = self.net(self.scaling_layer(y.float() * 2.0 - 1.0))
        total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        for k, (a, b) in enumerate(zip(fx, fy)):
            diff = (_unit_normalize(a) - _unit_normalize(b)) ** 2
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(1, 2, 3))
        return total


def _unit_normalize(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


def _strip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            continue
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def _check_and_load(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {name} key(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise WeightsError(f"{what} does not fit the network: " + "; ".join(parts))
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def build_lpips(weights: Mapping[str, Tensor], backbone: Mapping[str, Tensor] | None = None,
                net: str | None = None) -> LPIPS:
    """An eval-mode :class:`LPIPS` from its weights.

    Args:
        weights: a full LPIPS state dict (``net.slice*`` + ``lin*``; ``lins.N.*`` aliases accepted) or the lin layers
            only (``lin0..4.model.1.weight``), in which case ``backbone`` is required.
        backbone: a torchvision ``alexnet`` / ``vgg16`` state dict (only ``features.N.*`` is used).
        net: ``"alex"`` or ``"vgg"``; inferred from the lin layers' widths when None.
    """
    state = _strip(weights)
    lins: dict[str, Tensor] = {}
    nets: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("lins."):
            idx, rest = key[len("lins."):].split(".", 1)
            key = f"lin{idx}.{rest}"
        if key.startswith("lin"):
            lins.setdefault(key, value)
        elif key.startswith("net."):
            nets[key] = value
    if "lin1.model.1.weight" not in lins:
        raise WeightsError("LPIPS weights hold no lin layers (lin0..4.model.1.weight)")
    inferred = {192: "alex", 128: "vgg"}.get(int(lins["lin1.model.1.weight"].shape[1]))
    net = net or inferred
    if net not in LPIPS_CHANNELS:
        raise WeightsError(f"cannot tell the LPIPS backbone from lin1 with {lins['lin1.model.1.weight'].shape[1]} "
                           "channels (alex: 192, vgg: 128)")
    model = LPIPS(net)
    if not nets:
        if backbone is None:
            raise WeightsError("LPIPS weights hold only the lin layers: the backbone weights are needed too "
                               "(a torchvision alexnet/vgg16 state dict)")
        features = {k[len("features."):]: v for k, v in _strip(backbone).items() if k.startswith("features.")}
        for k, (a, b) in enumerate(_SLICES[net], start=1):
            for key, value in features.items():
                if a <= int(key.split(".", 1)[0]) < b:
                    nets[f"net.slice{k}.{key}"] = value
    full = {**nets, **lins, "scaling_layer.shift": model.scaling_layer.shift,
            "scaling_layer.scale": model.scaling_layer.scale}
    _check_and_load(model, full, f"LPIPS ({net}) weights")
    with torch.no_grad():
        for k in range(5):
            getattr(model, f"lin{k}").model[1].weight.clamp_(min=0.0)
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------------------
# FID


class InceptionFeatures(nn.Module):
    """torchvision Inception-v3 up to the 2048-d average pool. ``forward(x)``: float B×3×H×W in [0, 1] → (B, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import Inception3

        self.inception = Inception3(aux_logits=False, transform_input=False, init_weights=False)
        self.inception.fc = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.inception(x * 2.0 - 1.0).float()


def build_inception(weights: Mapping[str, Tensor]) -> InceptionFeatures:
    """An eval-mode :class:`InceptionFeatures` from a torchvision ``inception_v3`` state dict."""
    model = InceptionFeatures()
    state = {f"inception.{k}": v for k, v in _strip(weights).items()
             if not k.startswith("AuxLogits.") and not k.startswith("fc.")}
    _check_and_load(model, state, "Inception-v3 weights")
    return model.eval().requires_grad_(False)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D×D, rows are samples) in float64; needs at least 2 samples."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``|μ1 − μ2|² + Tr(Σ1) + Tr(Σ2) − 2·Tr((Σ1Σ2)^½)``; adds ``eps·I`` when the product's root is not finite
    (singular covariances from few samples) and drops a negligible imaginary part, as pytorch-fid does."""
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two distributions have different dimensions")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two sets of feature vectors (N×D, M×D; N, M ≥ 2).

    With at least D samples per side this is :func:`frechet_distance` on the sample statistics (``sqrtm``). With
    fewer, the covariances are low-rank and ``Tr((Σ1Σ2)^½)`` is computed exactly as the nuclear norm of
    ``A·Bᵀ / sqrt((N−1)(M−1))`` (A, B the centred features: the non-zero eigenvalues of Σ1Σ2 = AᵀA·BᵀB/c are the
    squared singular values of A·Bᵀ/√c) — the same value without a D×D matrix square root.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two N×D feature sets with N >= 2, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) > a.shape[1]:
        mu1, s1 = feature_statistics(a)
        mu2, s2 = feature_statistics(b)
        return frechet_distance(mu1, s1, mu2, s2)
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu1, b - mu2
    n1, n2 = len(a) - 1, len(b) - 1
    trace1 = float((ca * ca).sum() / n1)
    trace2 = float((cb * cb).sum() / n2)
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    diff = mu1 - mu2
    return max(float(diff @ diff + trace1 + trace2 - 2.0 * cross), 0.0)
