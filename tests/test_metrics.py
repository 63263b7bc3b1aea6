"""pfafn.metrics: SSIM against an independent numpy/scipy reference, PSNR on known MSEs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from pfafn.metrics import gaussian_window, psnr, ssim, to_unit_range
from tests.model_helpers import single_thread  # noqa: F401  (fixture)


@pytest.fixture(autouse=True, scope="module")
def _single_thread(single_thread):
    """These tensors are tiny (see tests.model_helpers.single_thread)."""


def reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Wang et al. SSIM as skimage computes it (gaussian_weights=True, sigma=1.5, use_sample_covariance=False).

    x, y: C×H×W float64. Per channel: Gaussian-filtered moments (truncate=3.5 → 11×11 window), SSIM map cropped by
    the window radius (the valid region), averaged; then averaged over channels.
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pad = 5
    values = []
    for a, b in zip(x, y):
        def filt(img):
            return ndimage.gaussian_filter(img, sigma=1.5, truncate=3.5, mode="reflect")

        ux, uy = filt(a), filt(b)
        vx = filt(a * a) - ux * ux
        vy = filt(b * b) - uy * uy
        vxy = filt(a * b) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        values.append(s[pad:-pad, pad:-pad].mean())
    return float(np.mean(values))


def random_pair(seed: int, shape=(3, 3, 32, 40), noise=0.1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    x = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 2, 2)))  # some structure
    y = (x + noise * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


def test_gaussian_window_matches_scipy_kernel():
    g = gaussian_window(11, 1.5, dtype=torch.float64)
    delta = np.zeros(21)
    delta[10] = 1.0
    kernel = ndimage.gaussian_filter1d(delta, sigma=1.5, truncate=3.5)[5:16]
    np.testing.assert_allclose(g.numpy(), kernel, rtol=1e-12, atol=1e-15)
    assert g.sum().item() == pytest.approx(1.0)


def test_ssim_identity_and_psnr_infinite():
    x, _ = random_pair(0, dtype=torch.float32)
    torch.testing.assert_close(ssim(x, x), torch.ones(3), rtol=0, atol=1e-6)
    assert torch.isinf(psnr(x, x)).all()


@pytest.mark.parametrize("noise", [0.02, 0.2])
def test_ssim_matches_numpy_scipy_reference(noise):
    x, y = random_pair(1, noise=noise)
    expected = torch.tensor([reference_ssim(a.numpy(), b.numpy()) for a, b in zip(x, y)], dtype=torch.float64)
    got = ssim(x, y)
    assert got.shape == (3,) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    # float32 inputs: only the input rounding differs (computed in float64, returned as float32)
    got32 = ssim(x.float(), y.float())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32, expected.float(), rtol=0, atol=1e-6)
    assert (got < 1).all() and (got > -1).all()


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = 0.2, 0.6
    x = torch.full((1, 1, 16, 16), a)
    y = torch.full((1, 1, 16, 16), b)
    c1 = 0.01**2
    # float32 inputs: a naive float32 E[x²] − μ² would be off by ~1e-4 here
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)


def test_ssim_is_per_sample_and_monotone_in_noise():
    x, _ = random_pair(2, shape=(1, 3, 24, 24))
    noisy = [random_pair(2, shape=(1, 3, 24, 24), noise=n)[1] for n in (0.01, 0.05, 0.2)]
    batch_x = x.expand(3, -1, -1, -1)
    batch_y = torch.cat(noisy)
    values = ssim(batch_x, batch_y)
    singles = torch.cat([ssim(x, n) for n in noisy])
    torch.testing.assert_close(values, singles)
    assert values[0] > values[1] > values[2]


def test_psnr_known_values():
    x = torch.rand(2, 3, 8, 8) * 0.8
    y = x + 0.1  # MSE 0.01 exactly (up to float rounding)
    torch.testing.assert_close(psnr(x, y), torch.full((2,), 20.0), rtol=0, atol=1e-4)
    expected = 10 * math.log10(4.0 / 0.01)
    torch.testing.assert_close(psnr(x, y, data_range=2.0), torch.full((2,), expected), rtol=0, atol=1e-4)
    z = torch.cat([x[:1] + 0.1, x[1:] + 0.01])
    torch.testing.assert_close(psnr(x, z), torch.tensor([20.0, 40.0]), rtol=0, atol=1e-3)


def test_to_unit_range_and_validation():
    torch.testing.assert_close(to_unit_range(torch.tensor([-1.0, 0.0, 1.0, 1.5])), torch.tensor([0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="window"):
        ssim(torch.rand(1, 3, 10, 12), torch.rand(1, 3, 10, 12))
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    half = torch.rand(1, 3, 16, 16).half()
    assert ssim(half, half).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_match_cpu():
    x, y = random_pair(3, dtype=torch.float32)
    torch.testing.assert_close(ssim(x.cuda(), y.cuda()).cpu(), ssim(x, y), rtol=0, atol=1e-5)
    torch.testing.assert_close(psnr(x.cuda(), y.cuda()).cpu(), psnr(x, y), rtol=0, atol=1e-4)
