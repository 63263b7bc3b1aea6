"""Full-reference image quality metrics, per sample, pure PyTorch (CPU and CUDA).

Convention: metrics take **images in [0, 1]** (float B×C×H×W) with ``data_range=1.0``. Model-space images in
[-1, 1] are converted first with :func:`to_unit_range` (SSIM's stabilising constants depend on the value offset,
so feeding [-1, 1] images with ``data_range=2`` would *not* give the same SSIM; PSNR would be unaffected).
Both are computed in float64 internally (in float32 the local variances E[x²] − μ² lose about 1e-4 of SSIM to
cancellation against C2 = 9e-4, e.g. on flat regions) and returned as float32 (float64 for float64 inputs): (B,)
tensors on the input device, one value per image.

- :func:`ssim`: Wang et al. (2004) with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, population
  (not sample) covariance, computed over the *valid* region (no padding) and averaged over channels and pixels —
  the same number as ``skimage.metrics.structural_similarity(x, y, data_range=1, channel_axis=0,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
- :func:`psnr`: ``10·log10(data_range² / MSE)`` with the MSE over C×H×W; ``inf`` for identical images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_window", "psnr", "ssim", "to_unit_range"]


def to_unit_range(x: Tensor) -> Tensor:
    """Map model-space images from [-1, 1] to [0, 1] ((x + 1) / 2, clamped)."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """Normalized 1-D Gaussian of odd length ``size`` (sum 1), centred on the middle tap.

    For size 11 and σ = 1.5 this equals scipy's ``gaussian_filter`` kernel with ``truncate=3.5`` (radius 5), the
    one skimage's SSIM uses.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be odd and positive, got {size}")
    radius = size // 2
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    return kernel.to(dtype=dtype, device=device)


def _result_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two B×C×H×W tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise TypeError(f"expected float tensors, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"tensors on different devices: {x.device} and {y.device}")


def ssim(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Per-sample structural similarity.

    Args:
        x, y: float B×C×H×W images in [0, 1] (see module docstring), H and W ≥ ``window_size``.
        data_range: value span L of the images (1.0 for [0, 1]); C1 = (k1·L)², C2 = (k2·L)².
        window_size, sigma: Gaussian window (published SSIM: 11, 1.5).
        k1, k2: SSIM constants (0.01, 0.03).

    Returns:
        (B,) tensor: mean SSIM map over the valid region and all channels; 1 for identical images.
    """
    _check_pair(x, y)
    b, c, h, w = x.shape
    if h < window_size or w < window_size:
        raise ValueError(f"images of {h}×{w} are smaller than the {window_size}×{window_size} SSIM window")
    out_dtype = _result_dtype(x)
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    g = gaussian_window(window_size, sigma, dtype=torch.float64, device=x.device)

    # The five local moments in one depthwise, separable, valid filtering pass: E[x], E[y], E[x²], E[y²], E[xy].
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # B×5C×H×W
    channels = stack.shape[1]
    stack = F.conv2d(stack, g.view(1, 1, 1, -1).expand(channels, 1, 1, window_size), groups=channels)
    stack = F.conv2d(stack, g.view(1, 1, -1, 1).expand(channels, 1, window_size, 1), groups=channels)
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.split(c, dim=1)

    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = e_xx - mu_xx
    var_y = e_yy - mu_yy
    cov_xy = e_xy - mu_xy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    ssim_map = ((2.0 * mu_xy + c1) * (2.0 * cov_xy + c2)) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).to(out_dtype)


def psnr(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Per-sample peak signal-to-noise ratio in dB.

    Args:
        x, y: float B×C×H×W images in [0, 1] (see module docstring).
        data_range: value span L (1.0 for [0, 1]).

    Returns:
        (B,) tensor ``10·log10(L² / mean((x − y)²))``; ``inf`` where the images are identical.
    """
    _check_pair(x, y)
    mse = (x.to(torch.float64) - y.to(torch.float64)).pow(2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(data_range**2 / mse)).to(_result_dtype(x))
