"""Fast inference for :class:`pfafn.tryon.TryOnModel`: channels_last, autocast and optional ``torch.compile``.

Usage::

    from pfafn.inference import InferenceMode, TryOnPredictor

    predictor = TryOnPredictor(model, InferenceMode(dtype="bf16", channels_last=True))
    out = predictor(person, garment, garment_mask)           # TryOnOutput, fp32, contiguous

    # tiled catalog reuse: encode each garment / person once, pair them many times
    masked, binary = predictor.prepare_garment(garment, mask)
    g_pyr = predictor.encode_garment(masked)
    p_pyr = predictor.encode_person(person)
    out = predictor.from_features(person, p_pyr, masked, binary, g_pyr)

    # or drive the model yourself (as pfafn.tiling does):
    mode = InferenceMode.parse("bf16+channels_last")
    model = mode.prepare(model)                               # eval + channels_last / compile, in place
    with torch.inference_mode(), mode.autocast(device):
        out = model(person, garment, garment_mask)            # outputs: fp32 flows / images

Precision policy (the reason this is a wrapper and not a ``model.half()``):

* ``dtype="bf16"`` / ``"fp16"`` run the convolutions (encoders, FPNs, flow heads' hidden layers, generator) under
  ``torch.autocast``; bf16 works on CPU and CUDA, fp16 is meant for CUDA (CPU fp16 autocast works but is slow
  without AMX-FP16).
* Everything that is a coordinate stays fp32: the 2-channel offset convolutions, the offset → grid conversion, flow
  composition and upsampling, and every ``grid_sample`` (autocast is disabled locally, see ``pfafn.nn.flow``).
  The correlation accumulates in fp32 (under bf16 at inference: bf16 GEMMs with fp32 accumulation, see
  ``pfafn.nn.correlation``); the final composition (tanh / sigmoid / blend) is fp32.
* ``channels_last`` converts the weights and inputs to NHWC, which oneDNN (CPU) and cuDNN (tensor cores) prefer.
* ``fold_bn`` (default on for bf16 / fp16, off for fp32) folds each Conv→BatchNorm pair into the conv
  (``pfafn.fuse``): one pass over the activation less per pair; the fp32 default stays the published arithmetic.
* ``compile=True`` applies ``torch.compile`` (inductor, with freezing) in place to the conv-heavy children
  (encoders, FPNs, flow network, generator); the first call per input shape pays the compilation — minutes on a
  2-core CPU, for no measured gain there (docs/model-speed.md): off by default.

Outputs are always fp32 and contiguous, whatever the mode.  The predictor runs under ``torch.inference_mode`` and
puts the model in eval mode (BatchNorm uses running statistics, as in the published test pipeline); it converts the
model in place (memory format, compilation), so keep one predictor per model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from pfafn.fuse import cast_conv_weights, fold_batchnorm
from pfafn.tryon import TryOnModel, TryOnOutput

__all__ = ["InferenceMode", "TryOnPredictor"]

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferenceMode:
    """How to run inference.

    Attributes:
        dtype: ``"fp32"`` (the published precision), ``"bf16"`` or ``"fp16"`` (autocast for the convolutions only).
        channels_last: NHWC weights and inputs.
        compile: ``torch.compile`` the conv-heavy children.
        fold_bn: fold every Conv→BatchNorm pair into the conv at :meth:`prepare` (``pfafn.fuse``). ``None`` (the
            default) means on for bf16 / fp16 and off for fp32, so the published fp32 path stays bit for bit
            (folding re-rounds the weights: ~1e-6 relative in fp32).
    """

    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    fold_bn: bool | None = None

    def __post_init__(self) -> None:
        if self.dtype not in _AUTOCAST_DTYPES:
            raise ValueError(f"InferenceMode.dtype must be one of {sorted(_AUTOCAST_DTYPES)}, got {self.dtype!r}")
        if self.fold_bn is None:
            object.__setattr__(self, "fold_bn", self.dtype != "fp32")

    @classmethod
    def parse(cls, spec: str) -> InferenceMode:
        """Parse ``"bf16"``, ``"bf16+channels_last"``, ``"fp16+channels_last+compile"``, ``"fp32"`` …

        Flags: ``channels_last`` (alias ``cl``), ``compile``, ``fold`` / ``nofold`` (BatchNorm folding, see
        ``fold_bn``; default on for bf16 / fp16); the dtype defaults to fp32.
        """
        dtype, channels_last, compile_, fold = "fp32", False, False, None
        for part in (p.strip().lower() for p in spec.split("+") if p.strip()):
            if part in _AUTOCAST_DTYPES:
                dtype = part
            elif part in ("channels_last", "cl"):
                channels_last = True
            elif part == "compile":
                compile_ = True
            elif part in ("fold", "nofold"):
                fold = part == "fold"
            else:
                raise ValueError(f"unknown inference mode part {part!r} in {spec!r}")
        return cls(dtype=dtype, channels_last=channels_last, compile=compile_, fold_bn=fold)

    def __str__(self) -> str:
        parts = [self.dtype] + (["channels_last"] if self.channels_last else []) + (["compile"] if self.compile else [])
        if self.fold_bn != (self.dtype != "fp32"):  # only when it differs from the default: str ↔ parse round trip
            parts.append("fold" if self.fold_bn else "nofold")
        return "+".join(parts)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST_DTYPES[self.dtype]

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The autocast context for ``device`` (a no-op for fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.autocast_dtype)

    def input(self, t: Tensor, device: torch.device | str | None = None) -> Tensor:
        """``t`` as a model input: fp32 on ``device`` (default: where it is), NHWC with ``channels_last`` (an NCHW
        input would be converted by the first convolution and again wherever it joins NHWC activations)."""
        memory_format = torch.channels_last if self.channels_last and t.dim() == 4 else torch.contiguous_format
        return t.to(device=device or t.device, dtype=torch.float32).contiguous(memory_format=memory_format)

    def prepare(self, model: TryOnModel) -> TryOnModel:
        """Put ``model`` in eval mode and apply BatchNorm folding / channels_last / compile **in place**; returns it.

        For callers that drive the model themselves (e.g. ``pfafn.tiling``): run it under ``torch.inference_mode()``
        and :meth:`autocast`.  ``compile`` wraps the conv-heavy children with ``torch.compile`` (``Module.compile``,
        so state_dict keys do not change).  ``fold_bn`` replaces folded BatchNorms by ``nn.Identity`` (their
        state_dict keys disappear): the prepared model is for inference, not for saving.
        """
        model.eval()
        if self.fold_bn:
            fold_batchnorm(model)  # before channels_last: the folded weights are converted with the rest
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            cast_conv_weights(model, self.autocast_dtype)  # autocast would recast them on every call
        if self.compile:
            # Inference only, weights constant: inductor may fold them into the graph and prepack them for oneDNN
            # (its CPU inference recipe). Compiled code is cached under TORCHINDUCTOR_CACHE_DIR (default
            # /tmp/torchinductor_<user>), which later runs on the node reuse; docs/model-speed.md has the costs.
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            for module in (
                model.warp.image_features,
                model.warp.cond_features,
                model.warp.image_FPN,
                model.warp.cond_FPN,
                model.warp.aflow_net,
                model.gen,
            ):
                if getattr(module, "_compiled_call_impl", None) is None:
                    module.compile(dynamic=False)
        return model


class TryOnPredictor:
    """Runs a :class:`TryOnModel` under an :class:`InferenceMode`; same call signatures as the model.

    Inputs may be on any device / dtype; they are moved to the model's device as fp32 (NHWC with channels_last).
    """

    def __init__(self, model: TryOnModel, mode: InferenceMode = InferenceMode()) -> None:
        self.model = mode.prepare(model)
        self.mode = mode

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(self.mode.autocast(self.device))
        return stack

    def _input(self, t: Tensor) -> Tensor:
        return self.mode.input(t, self.device)

    @staticmethod
    def _output(out: TryOnOutput) -> TryOnOutput:
        return TryOnOutput(**{f.name: getattr(out, f.name).float().contiguous() for f in fields(TryOnOutput)})

    def __call__(self, person: Tensor, garment: Tensor, garment_mask: Tensor) -> TryOnOutput:
        """The published test pipeline (see :class:`TryOnModel`); fp32 contiguous :class:`TryOnOutput`."""
        with self._context():
            out = self.model(self._input(person), self._input(garment), self._input(garment_mask))
        return self._output(out)

    def prepare_garment(self, garment: Tensor, garment_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(garment * binary_mask, binary_mask)`` on the model's device, fp32."""
        with torch.inference_mode():
            return self.model.prepare_garment(self._input(garment), self._input(garment_mask))

    def encode_garment(self, masked_garment: Tensor) -> tuple[Tensor, ...]:
        """Garment FPN pyramid (fine → coarse), in the autocast dtype (bf16 halves the memory of a cached tile)."""
        with self._context():
            return self.model.warp.encode_garment(self._input(masked_garment))

    def encode_person(self, person: Tensor) -> tuple[Tensor, ...]:
        """Person FPN pyramid (fine → coarse), in the autocast dtype."""
        with self._context():
            return self.model.warp.encode_person(self._input(person))

    def from_features(
        self,
        person: Tensor,
        person_pyramid: Sequence[Tensor],
        masked_garment: Tensor,
        binary_mask: Tensor,
        garment_pyramid: Sequence[Tensor],
    ) -> TryOnOutput:
        """Try-on from precomputed pyramids; equals ``__call__`` for the same pair (batch sizes must match)."""
        with self._context():
            out = self.model.from_features(
                self._input(person), person_pyramid, self._input(masked_garment), self._input(binary_mask),
                garment_pyramid,
            )
        return self._output(out)
