"""Local correlation (cost volume) of PF-AFN, in pure PyTorch.

The published model calls a CuPy CUDA kernel (an adaptation of the FlowNet2 correlation by sniklaus, launched with
``intStride=1``) that has no CPU path.  This module reimplements its exact semantics (``PF-AFN_test/models/correlation/correlation.py``) with ordinary
tensor operations, so it runs on CPU and CUDA, is differentiable by autograd (the CUDA backward kernels are the
exact gradients of the same formula) and needs no CuPy::

    out[b, (dy + d) * (2d + 1) + (dx + d), y, x] = 1/C * sum_c first[b, c, y, x] * second[b, c, y + dy, x + dx]

for ``dx, dy`` in ``-d..d`` (``d = max_displacement``, 3 in PF-AFN, so 49 output channels), with ``second``
zero-padded outside the image.  Channels run row-major over ``(dy, dx)`` with ``dx`` fastest.  In AFWM ``first`` is
the (pre-warped) garment feature and ``second`` the person feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["local_correlation"]


def _compute_dtype(first: Tensor, second: Tensor) -> torch.dtype:
    dtype = torch.promote_types(first.dtype, second.dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"local_correlation expects floating-point inputs, got {first.dtype} and {second.dtype}")
    # Reduced-precision inputs (autocast: bf16 / fp16) are accumulated in fp32: the mean over C=256 channels of
    # products loses ~3 significant bits in bf16, and the cost volume directly drives the flow estimate.
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


# On CPU the shifts are processed in horizontal bands whose B×C×rows×W slab stays cache-resident across the
# 49 products: ~8× faster than whole-image products at 256×192, batch 4 (memory-bound otherwise).
_CPU_SLAB_BYTES = 2 << 20


def _rows_per_band(first: Tensor) -> int:
    batch, channels, height, width = first.shape
    if first.device.type != "cpu":
        return height  # GPUs: one kernel per shift over the whole image
    return max(1, min(height, _CPU_SLAB_BYTES // max(1, batch * channels * width * first.element_size())))


def local_correlation(first: Tensor, second: Tensor, max_displacement: int = 3) -> Tensor:
    """Channel-mean correlation of ``first`` with ``second`` displaced by up to ``max_displacement`` pixels.

    Args:
        first: B×C×H×W, the garment feature in AFWM (not shifted).
        second: B×C×H×W, the person feature in AFWM (shifted, zero padding outside the image).
        max_displacement: ``d``; the output has ``(2d+1)**2`` channels (49 for the published ``d = 3``).

    Returns:
        B×(2d+1)²×H×W.  Channel ``k`` holds displacement ``dy = k // (2d+1) - d``, ``dx = k % (2d+1) - d``.
        The dtype is the promoted input dtype, except that fp16 / bf16 inputs are computed in and returned as
        fp32 (see ``_compute_dtype``); the following convolution casts back under autocast.

    Memory: a loop over the shifts over views of the padded ``second`` (on CPU, over horizontal bands of rows as
    well): one B×C×rows×W product is live at a time, no (2d+1)²-fold unfolded copy is made, and autograd saves
    only views of ``first`` and of the padded ``second``.
    """
    if first.dim() != 4 or first.shape != second.shape:
        raise ValueError(
            f"local_correlation expects two B×C×H×W tensors of the same shape, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}"
        )
    if max_displacement < 0:
        raise ValueError(f"max_displacement must be >= 0, got {max_displacement}")
    dtype = _compute_dtype(first, second)
    first = first.to(dtype)
    second = second.to(dtype)
    d = max_displacement
    size = 2 * d + 1
    _, channels, height, width = first.shape
    padded = F.pad(second, (d, d, d, d))  # zeros outside the image
    rows = _rows_per_band(first)
    bands = []
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        band = first[:, :, top:bottom]
        planes = []
        for dy in range(size):  # dy-major ...
            shifted_rows = padded[:, :, top + dy : bottom + dy]
            for dx in range(size):  # ... dx fastest
                planes.append((band * shifted_rows[:, :, :, dx : dx + width]).sum(dim=1))
        bands.append(torch.stack(planes, dim=1))
    out = bands[0] if len(bands) == 1 else torch.cat(bands, dim=2)
    return out * (1.0 / channels)
