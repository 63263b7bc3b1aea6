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

from .flow import memory_format_of

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
        fp32 (see ``_compute_dtype``); the following convolution casts back under autocast.  Under bf16 autocast with
        autograd off (inference) both inputs are cast to bf16 and the volume is computed as batched
        matrix products with fp32 accumulation and returned in bf16 (``_correlation_bf16_gemm``): the next
        convolution takes it in bf16 anyway.

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
    if _bf16_gemm_applies(first, second):
        return _correlation_bf16_gemm(first, second, max_displacement)
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


def _bf16_gemm_applies(first: Tensor, second: Tensor) -> bool:
    """bf16 autocast on this device, floating inputs, and autograd off (inference only: training keeps the
    differentiable fp32 loop, whose saved tensors are views)."""
    device_type = first.device.type
    if not (first.is_floating_point() and second.is_floating_point()):
        return False
    if not (torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)):
        return False
    if torch.get_autocast_dtype(device_type) != torch.bfloat16:
        return False
    return not torch.is_grad_enabled()


#: Pixels per block of the GEMMs: each block of ``k`` consecutive pixels of ``first`` is multiplied against the
#: ``k + 2d`` pixels of its shifted neighbourhood, so (k + 2d) / (2d + 1) times the needed products are computed;
#: larger blocks make larger (more efficient) GEMMs but waste more. 24 (k = 26 at 128×96) was fastest of
#: 16 / 24 / 32 / 40 / 48 at 128×96 (174 ms vs 193 for 32), within noise of them at 64×48 and 32×24 (C 256,
#: batch 8, two threads on the 2-core AVX512-BF16 machine; the finest level is ~75 % of the correlation's time).
_GEMM_BLOCK = 24


def _flat_nhwc(x: Tensor, d: int, row: int, top: int, left: int, length: int) -> Tensor:
    """``x`` (B×C×H×W, any float dtype) as a zero-filled bf16 (length)×C row-major pixel sequence on a
    B×(H+2d)×row canvas; the cast to bf16 and the NHWC transpose are one copy."""
    batch, channels, height, width = x.shape
    canvas = (batch, height + 2 * d, row, channels)
    buf = x.new_zeros(length, channels, dtype=torch.bfloat16)
    buf[: canvas[0] * canvas[1] * canvas[2]].view(canvas)[:, top : top + height, left : left + width] = x.permute(
        0, 2, 3, 1
    )
    return buf


def _correlation_bf16_gemm(first: Tensor, second: Tensor, d: int) -> Tensor:
    """The cost volume as batched bf16 GEMMs (fp32 accumulation inside the GEMM, bf16 result).

    Both features are laid out NHWC as one pixel sequence on the zero-padded canvas of ``second``: B images of
    H + 2d rows of ``row`` pixels, ``row`` = W + 2d rounded up to a multiple of the block size k, which is chosen
    near ``_GEMM_BLOCK`` so that little or no rounding is needed (``first`` in the top-left H×W of each canvas).
    The neighbour (dy, dx) of sequence position i is then position ``i + dy·row + dx`` of the padded ``second``.
    The k + 2d-pixel window of ``second`` that follows each k-pixel block is copied once
    (``windows``, ~1.2× the canvas); since ``row`` is a multiple of k, the windows for shift dy are the same ones,
    ``dy·row / k`` blocks further on, so each dy is one contiguous batched GEMM: a k×C block of ``first`` times a
    C×(k + 2d) window, whose diagonals ``[i, i + dx]`` are the 2d + 1 wanted values.
    """
    size = 2 * d + 1
    batch, channels, height, width = first.shape
    per_row = max(1, round((width + 2 * d) / _GEMM_BLOCK))  # blocks per canvas row: k ≈ _GEMM_BLOCK, row ≈ W + 2d
    k = -(-(width + 2 * d) // per_row)
    row = k * per_row
    blocks = batch * (height + 2 * d) * row // k  # the canvas, in blocks; first's blocks past its rows are zeros
    n_windows = blocks + (size - 1) * per_row  # the last dy reaches (size - 1) canvas rows past the canvas
    padded = _flat_nhwc(second, d, row, d, d, n_windows * k + 2 * d)
    windows = padded.as_strided((n_windows, k + 2 * d, channels), (k * channels, channels, 1))
    windows = windows.contiguous().transpose(1, 2)  # the one copy (whole pixels): overlapping windows → GEMM operand
    first_blocks = _flat_nhwc(first, d, row, 0, 0, blocks * k).view(blocks, k, channels)
    out = first_blocks.new_empty(blocks, k, size, size)
    for dy in range(size):
        products = torch.bmm(first_blocks, windows[dy * per_row : dy * per_row + blocks])  # blocks×k×(k+2d)
        out[:, :, dy] = products.as_strided((blocks, k, size), (k * (k + 2 * d), k + 2 * d + 1, 1))
    out = out.view(batch, height + 2 * d, row, size * size)[:, :height, :width]
    # The next convolution runs in the features' layout: a channels_last volume for channels_last features (no
    # conversion), plain NCHW otherwise (NCHW weights would make oneDNN reorder per call).
    return (out.permute(0, 3, 1, 2) * (1.0 / channels)).contiguous(memory_format=memory_format_of(second))
