"""The Ray Data batch-inference skeleton the model stages share (catalog try-on, tutor inference, evaluation).

Each stage cuts its work into *units* (a tile of garments × models, a chunk of persons, a chunk of pairs) that stay
ids/URIs until they run through::

    from_items(units) → decode (CPU tasks) → model (actor pool, optional) → write (CPU tasks, the commit point)

and the driver consumes one small row per committed unit. Errors never escape a unit: decode, model and write
turn failures into per-row error strings (``error_reason``), so one bad image never drops a block of good rows.
"""
from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

# Test-only fault injection: SIGKILL the driver after N committed units, to prove kill + re-run semantics.
FAULT_KILL_ENV = "PFAFN_FAULT_KILL_AFTER_COMMITS"


@dataclass
class BatchStageConfig:
    """The fields every Ray Data model stage shares (catalog try-on, tutor inference); documented in their YAMLs."""

    height: int = 256
    width: int = 192
    batch_size: int = 16
    precision: str = "auto"
    channels_last: bool | str = "auto"  # true | false | auto (see resolve_channels_last)
    compile: bool = False
    device: str = "auto"
    actors: int = 0
    cpus_per_actor: float = 0.0
    torch_threads: int = 0
    min_mask_confidence: float = 0.5
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 50 * 1024 * 1024
    max_error_rate: float = 1.0
    gallery_size: int = 24
    lock_ttl_s: float = 600.0
    force_unlock: bool = False
    run_id: str = ""

    def validate_common(self, stage: str, required: tuple[str, ...]) -> None:
        from pipelines.errors import StageError

        for name in required:
            if not getattr(self, name):
                raise StageError(f"{stage}: --{name.replace('_', '-')} is required")
        if self.height % 32 or self.width % 32 or self.height < 64 or self.width < 64:
            raise StageError(f"{stage}: height and width must be multiples of 32 and >= 64, got "
                             f"{self.height}x{self.width}")
        if self.batch_size < 1:
            raise StageError(f"{stage}: batch_size must be >= 1")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise StageError(f"{stage}: precision must be auto|fp32|bf16|fp16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise StageError(f"{stage}: device must be auto|cpu|cuda, got {self.device!r}")
        if self.channels_last not in (True, False, "auto"):
            raise StageError(f"{stage}: channels_last must be true|false|auto, got {self.channels_last!r}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise StageError(f"{stage}: max_error_rate must be within [0, 1]")


def one_line(exc: BaseException) -> str:
    """An exception as one short line (typed image/storage errors carry a ``reason``)."""
    text = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def error_reason(what: str, exc: BaseException) -> str:
    """``"garment TruncatedImageError: truncated JPEG"`` — the one-line reason stored in error rows."""
    return f"{what} {type(exc).__name__}: {one_line(exc)}"


def stack_ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A batch column of per-row arrays of different shapes (Ray Data's variable-shaped tensors)."""
    if len(arrays) == 1:
        return arrays[0][None]
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with native bf16 (AVX512-BF16/AMX)."""
    if precision != "auto":
        return precision
    import torch

    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        native = False
    return "bf16" if native else "fp32"


def resolve_channels_last(channels_last: bool | str, device: str, precision: str) -> bool:
    """``auto`` -> NHWC on CUDA (tensor-core convolutions) and for fp32 on CPU; plain NCHW for bf16/fp16 on CPU.

    Measured on an AVX512-BF16 CPU: bf16 autocast ran 1.06-1.29× faster without channels_last in
    docs/model-speed.md (in the catalog benchmark the two swapped places between runs), fp32 ~1.12× faster with it.
    ``precision`` is the resolved one (not ``auto``)."""
    if channels_last != "auto":
        return bool(channels_last)
    return device == "cuda" or precision == "fp32"


def decode_task_cpus(actor_plan) -> float:
    """CPUs of a decode task in front of the model actors.

    Ray Data fuses a task map into the following actor map when their resource requests are equal, which would run
    the decoding inside the model actors instead of in CPU tasks beside them; keep the two requests different.
    """
    if actor_plan is None or actor_plan.num_gpus or abs(actor_plan.num_cpus - 0.5) > 1e-6:
        return 0.5
    return 0.4


def decode_garment(image_uri: str, mask_uri: str | None, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Read, decode and fit one garment photo and its mask (read, or extracted from a plain-background photo).

    Returns ``(uint8 H×W×3, uint8 H×W mask in {0, 255})`` at ``cfg["height"] × cfg["width"]``. Raises the typed
    image / storage / :class:`pfafn.garment_mask.GarmentMaskError` errors.
    """
    from pfafn import garment_mask, imageio
    from pipelines import storage

    data = storage.read_bytes(image_uri, max_bytes=cfg["max_image_bytes"])
    image = imageio.decode_image(data, max_pixels=cfg["max_image_pixels"])
    if mask_uri:
        mask_data = storage.read_bytes(mask_uri, max_bytes=cfg["max_image_bytes"])
        mask = imageio.decode_mask(mask_data, max_pixels=cfg["max_image_pixels"])
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the garment image is "
                             f"{image.shape[1]}x{image.shape[0]}")
    else:
        extracted = garment_mask.extract_garment_mask(image)
        if extracted.confidence < cfg["min_mask_confidence"]:
            raise garment_mask.GarmentMaskError(
                f"low mask confidence {extracted.confidence:.2f} < {cfg['min_mask_confidence']:.2f}"
            )
        mask = extracted.mask.astype(np.float32)
    fitted = imageio.fit_image(image, cfg["height"], cfg["width"])
    fitted_mask = imageio.fit_mask(mask, cfg["height"], cfg["width"])
    return fitted, (fitted_mask > 0.5).astype(np.uint8) * 255


def decode_photo(image_uri: str, cfg: dict) -> np.ndarray:
    """Read, decode and fit one person photo to ``cfg["height"] × cfg["width"]`` (uint8 H×W×3)."""
    from pfafn import imageio
    from pipelines import storage

    data = storage.read_bytes(image_uri, max_bytes=cfg["max_image_bytes"])
    image = imageio.decode_image(data, max_pixels=cfg["max_image_pixels"])
    return imageio.fit_image(image, cfg["height"], cfg["width"])


def stream_units(
    units: list[dict],
    *,
    decode: Callable[[dict], dict],
    write: Callable[[dict, Any], dict],
    actor_plan=None,
    model_cls: type | None = None,
    model_kwargs: dict | None = None,
    payload: str = "images",
) -> Iterator[dict]:
    """Run ``units`` through decode → model actors (when ``model_cls``) → write; yield one row per committed unit.

    ``decode(unit)`` returns ``{"meta": json str, ...arrays}``; the model actor's ``__call__`` takes a batch of those
    and returns ``{"meta": json str, payload: array}``; ``write(meta_dict, payload_array_or_None)`` commits the unit
    and returns a small summary row.
    """
    import ray

    ds = ray.data.from_items(units, override_num_blocks=min(len(units), 4096))
    decoded = ds.map(decode, num_cpus=decode_task_cpus(actor_plan))
    if model_cls is not None:
        modelled = decoded.map_batches(
            model_cls,
            fn_constructor_kwargs=model_kwargs or {},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actor_plan.size),
            num_gpus=actor_plan.num_gpus,
            num_cpus=actor_plan.num_cpus,
        )
        written = modelled.map(lambda row: write(json.loads(row["meta"]), row[payload]), num_cpus=0.5)
    else:
        written = decoded.map(lambda row: write(json.loads(row["meta"]), None), num_cpus=0.5)
    kill_after = int(os.environ.get(FAULT_KILL_ENV, "0") or 0)
    done = 0
    for row in written.iter_rows():
        done += 1
        yield row
        if kill_after and done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def progress(done: int, total: int) -> bool:
    """Whether to log progress after ``done`` of ``total`` units (about 20 lines per run)."""
    return done == total or done % max(1, total // 20) == 0
