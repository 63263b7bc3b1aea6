"""Training losses of PF-AFN (the original ``PF-AFN_train/train_P[BF]AFN_{stage1,e2e}.py`` scripts; docs/method.md says
what each term does), pure PyTorch.

Conventions (see ``docs/architecture.md``):

- images are float B×3×H×W in [-1, 1]; masks are float B×1×H×W in [0, 1];
- a *flow* is a normalized sampling grid B×2×h×w (channel 0 = x, channel 1 = y, align_corners=True convention);
- an *offset* is a raw network output B×2×h×w in pixels of its level (netMain Δ / netRefine Δr).

The warp losses consume a ``WarpOutput``-like object (``pfafn.nn.afwm.WarpOutput`` built with
``intermediates=True``) by duck typing: only the attributes ``warped_garments``, ``warped_masks``, ``flows``,
``offsets`` and ``person_features`` are read, every list ordered coarse→fine (index 0 = H/16).

Every loss returns scalar tensors that carry gradients. Functions that also return a ``parts`` dict fill it with
*detached* 0-dim tensors (no host sync): each entry is that term's contribution to the returned loss (all weights
applied), and ``parts["total"]`` equals the loss.

The VGG perceptual loss needs ImageNet VGG19 weights. They are never downloaded implicitly: see
:meth:`VGGLoss.from_source` and :class:`VGGWeightsUnavailable`.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TORCHVISION_VGG19_FILENAME",
    "TORCHVISION_VGG19_URL",
    "VGG_WEIGHTS_CONFIG_KEY",
    "VGGLoss",
    "VGGWeightsUnavailable",
    "FEATURE_DISTILL_WEIGHTS",
    "FLOW_DISTILL_LEVELS",
    "SECOND_DIFFERENCE_FILTERS",
    "distillation_gate",
    "distillation_loss",
    "generalized_charbonnier",
    "load_vgg19_features_state_dict",
    "parser_based_gen_loss",
    "parser_free_gen_loss",
    "random_vgg19_features_state_dict",
    "second_order_differences",
    "second_order_smoothness",
    "skin_loss_weights",
    "total_variation",
    "torchvision_vgg19_cache_path",
    "warp_loss",
]

# ---------------------------------------------------------------------------------------------------------------------
# VGG19 perceptual loss
# ---------------------------------------------------------------------------------------------------------------------

#: File name of torchvision's ImageNet VGG19 weights (``VGG19_Weights.IMAGENET1K_V1``), as used by the original training code.
TORCHVISION_VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
#: Where torchvision publishes that file (only fetched with ``allow_download=True``).
TORCHVISION_VGG19_URL = f"https://download.pytorch.org/models/{TORCHVISION_VGG19_FILENAME}"
#: Config key named in error messages; callers with a different config layout pass their own ``config_key``.
VGG_WEIGHTS_CONFIG_KEY = "loss.vgg_weights"

# torchvision's VGG19 ("E") feature configuration up to relu5_1: conv output channels, "M" = 2×2 max-pool.
_VGG19_CFG_TO_RELU5_1: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512,
                                                "M", 512)
#: Exclusive ends of the original VGGLoss slices [0,2) [2,7) [7,12) [12,21) [21,30): outputs of relu1_1 … relu5_1.
_VGG_SLICE_ENDS = (2, 7, 12, 21, 30)
#: Reference weights of the relu1_1 … relu5_1 L1 terms.
_VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class VGGWeightsUnavailable(RuntimeError):
    """The VGG loss is enabled but no usable VGG19 weights could be obtained (missing, unreadable or malformed)."""


def _vgg19_conv_shapes() -> dict[int, tuple[int, int]]:
    """Index in ``vgg19.features`` → (out_channels, in_channels) of each 3×3 conv up to conv5_1."""
    shapes: dict[int, tuple[int, int]] = {}
    index, in_ch = 0, 3
    for item in _VGG19_CFG_TO_RELU5_1:
        if item == "M":
            index += 1
        else:
            shapes[index] = (int(item), in_ch)
            in_ch = int(item)
            index += 2  # conv + ReLU
    return shapes


_VGG19_CONVS = _vgg19_conv_shapes()  # {0: (64, 3), 2: (64, 64), 5: (128, 64), ..., 28: (512, 512)}


def _vgg19_features_to_relu5_1() -> nn.Sequential:
    """``torchvision.models.vgg19().features[:30]`` with ``ceil_mode=True`` pools, parameters on the meta device.

    Module indices equal torchvision's, so the state-dict keys are ``N.weight`` / ``N.bias``. ``ceil_mode=True``
    lets the 16×12 pyramid level pass pool4 (a porting pitfall on PyTorch >= 1.2); it changes nothing for even sizes.
    """
    layers: list[nn.Module] = []
    in_ch = 3
    with torch.device("meta"):
        for item in _VGG19_CFG_TO_RELU5_1:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers.append(nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1))
                layers.append(nn.ReLU(inplace=False))
                in_ch = int(item)
    assert len(layers) == _VGG_SLICE_ENDS[-1]
    return nn.Sequential(*layers)


def torchvision_vgg19_cache_path() -> Path:
    """Where torchvision's VGG19 file is looked up: ``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth``.

    ``torch.hub.get_dir()`` honours ``torch.hub.set_dir``, ``$TORCH_HOME`` and ``$XDG_CACHE_HOME``.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG19_FILENAME


def _unavailable(reason: str, config_key: str) -> VGGWeightsUnavailable:
    cache = torchvision_vgg19_cache_path()
    return VGGWeightsUnavailable(
        f"VGG19 weights for the perceptual (VGG) loss are unavailable: {reason}\n"
        f"Fix it in one of these ways:\n"
        f"  - copy torchvision's ImageNet VGG19 file {TORCHVISION_VGG19_FILENAME} ({TORCHVISION_VGG19_URL}) to "
        f"{cache} and set {config_key}=torchvision;\n"
        f"  - or set {config_key}=<local path, file:// or s3:// URI> of a torchvision vgg19 state dict "
        f"('features.N.weight' keys) or a features-only state dict ('N.weight' keys);\n"
        f"  - or, on a machine with internet access, allow the download (allow_download=True);\n"
        f"  - or disable the VGG term (VGG loss weight 0), which departs from the published training."
    )


def _extract_features_state_dict(raw: Any, origin: str, config_key: str) -> dict[str, Tensor]:
    """Pick the conv weights of ``features[:30]`` from a torchvision or features-only state dict (float32 copies)."""
    if not isinstance(raw, Mapping):
        raise _unavailable(f"{origin} holds a {type(raw).__name__}, not a state dict.", config_key)
    prefix = "features." if any(str(k).startswith("features.") for k in raw) else ""
    out: dict[str, Tensor] = {}
    problems: list[str] = []
    for index, (out_ch, in_ch) in _VGG19_CONVS.items():
        for name, shape in (("weight", (out_ch, in_ch, 3, 3)), ("bias", (out_ch,))):
            key = f"{prefix}{index}.{name}"
            value = raw.get(key)
            if not isinstance(value, Tensor):
                problems.append(f"missing {key!r}")
            elif tuple(value.shape) != shape:
                problems.append(f"{key!r} has shape {tuple(value.shape)}, expected {shape}")
            else:
                out[f"{index}.{name}"] = value.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    if problems:
        sample = ", ".join(repr(k) for k in list(raw)[:4])
        raise _unavailable(
            f"{origin} is not a VGG19 state dict ({'; '.join(problems[:4])}"
            f"{'; …' if len(problems) > 4 else ''}). First keys found: {sample or 'none'}.",
            config_key,
        )
    return out


def _torch_load_uri(uri: str, storage_options: Mapping[str, Any] | None, config_key: str) -> Any:
    import fsspec  # local import: only needed when loading from a path/URI

    try:
        with fsspec.open(uri, "rb", **dict(storage_options or {})) as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise _unavailable(f"no file at {uri!r}.", config_key) from exc
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise _unavailable(f"could not read {uri!r} ({type(exc).__name__}: {exc}).", config_key) from exc


def load_vgg19_features_state_dict(
    source: str | os.PathLike[str] | Mapping[str, Tensor] | None,
    *,
    allow_download: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    config_key: str = VGG_WEIGHTS_CONFIG_KEY,
) -> dict[str, Tensor]:
    """Load the 13 conv layers of VGG19 ``features[:30]`` as a features-only state dict (``"N.weight"`` keys).

    Args:
        source: one of
            - ``"torchvision"``: torchvision's ImageNet file, read from :func:`torchvision_vgg19_cache_path`
              (downloaded there only when ``allow_download=True``);
            - a local path, ``file://`` or ``s3://`` URI (opened with fsspec, ``torch.load(weights_only=True)``)
              of a full torchvision vgg19 state dict (``features.N.weight``, other keys ignored) or a features-only
              one (``N.weight``);
            - an in-memory state dict of either form;
            - ``None``: no weights configured (always raises).
        allow_download: permit fetching ``vgg19-dcbb9e9d.pth`` from download.pytorch.org into the hub cache.
        storage_options: passed to ``fsspec.open`` (e.g. ``{"client_kwargs": {"endpoint_url": ...}}`` for S3).
        config_key: the config key named in error messages.

    Returns:
        float32 CPU tensors keyed ``"{index}.weight"`` / ``"{index}.bias"`` for indices 0, 2, 5, …, 28.

    Raises:
        VGGWeightsUnavailable: nothing configured, file missing/unreadable, or not a VGG19 state dict.
    """
    if source is None:
        raise _unavailable(f"no weights configured ({config_key} is not set).", config_key)
    if isinstance(source, Mapping):
        return _extract_features_state_dict(source, "the given state dict", config_key)
    text = os.fspath(source)
    if text == "torchvision":
        cache = torchvision_vgg19_cache_path()
        if cache.is_file():
            raw = _torch_load_uri(str(cache), None, config_key)
            return _extract_features_state_dict(raw, str(cache), config_key)
        if not allow_download:
            raise _unavailable(f"{cache} does not exist and downloading is not allowed.", config_key)
        try:
            raw = torch.hub.load_state_dict_from_url(
                TORCHVISION_VGG19_URL,
                model_dir=str(cache.parent),
                map_location="cpu",
                progress=False,
                check_hash=True,
                file_name=TORCHVISION_VGG19_FILENAME,
                weights_only=True,
            )
        except Exception as exc:  # network errors come in many types (URLError, HTTPError, timeouts, hash mismatch)
            raise _unavailable(
                f"downloading {TORCHVISION_VGG19_URL} failed ({type(exc).__name__}: {exc}).", config_key
            ) from exc
        return _extract_features_state_dict(raw, TORCHVISION_VGG19_URL, config_key)
    raw = _torch_load_uri(text, storage_options, config_key)
    return _extract_features_state_dict(raw, text, config_key)


def random_vgg19_features_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """A He-initialized random features-only VGG19 state dict, for tests and smoke presets only.

    A random VGG is *not* a perceptual loss; it only exercises the code path with realistic shapes and costs.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for index, (out_ch, in_ch) in _VGG19_CONVS.items():
        std = (2.0 / (in_ch * 9)) ** 0.5
        out[f"{index}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=gen) * std
        out[f"{index}.bias"] = torch.zeros(out_ch)
    return out


class VGGLoss(nn.Module):
    """Reference perceptual loss ``networks.VGGLoss`` (pix2pixHD style), frozen.

    ``loss = Σ_k w_k · mean|φ_k(x) − φ_k(y)|`` over relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of VGG19 with
    w = (1/32, 1/16, 1/8, 1/4, 1). Inputs are fed as they are, in [-1, 1], **without** ImageNet normalization (as
    published). The target's features are computed without gradient (the original detaches them). All max-pools use
    ``ceil_mode=True`` so the 16×12 level works.

    Build it with :meth:`from_source` (path / URI / ``"torchvision"``) or :meth:`from_state_dict` (in memory).
    The module is always in eval mode and its parameters never require grad; move it with ``.to(device)``.

    Shapes: ``forward(x, y)`` with x, y float B×3×H×W (any H, W ≥ 1) → 0-dim tensor.
    """

    def __init__(self, state_dict: Mapping[str, Tensor], *, config_key: str = VGG_WEIGHTS_CONFIG_KEY) -> None:
        """
        Args:
            state_dict: torchvision vgg19 (``features.N.*``) or features-only (``N.*``) weights; only the 13 convs up
                to conv5_1 are used, copied as float32.
            config_key: config key named if the weights are malformed (:class:`VGGWeightsUnavailable`).
        """
        super().__init__()
        weights = _extract_features_state_dict(state_dict, "the given state dict", config_key)
        self.features = _vgg19_features_to_relu5_1()
        self.features.load_state_dict(weights, strict=True, assign=True)
        self.features.requires_grad_(False)
        self.layer_weights: tuple[float, ...] = _VGG_LAYER_WEIGHTS
        super().train(False)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> VGGLoss:
        """Build from an in-memory torchvision (``features.N.*``) or features-only (``N.*``) state dict."""
        return cls(state_dict)

    @classmethod
    def from_source(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Tensor] | None,
        *,
        allow_download: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        config_key: str = VGG_WEIGHTS_CONFIG_KEY,
    ) -> VGGLoss:
        """Build from ``"torchvision"``, a path / ``file://`` / ``s3://`` URI, or a state dict.

        See :func:`load_vgg19_features_state_dict`; raises :class:`VGGWeightsUnavailable` when no weights can be had.
        """
        weights = load_vgg19_features_state_dict(
            source, allow_download=allow_download, storage_options=storage_options, config_key=config_key
        )
        return cls(weights, config_key=config_key)

    def train(self, mode: bool = True) -> VGGLoss:
        """No-op: the loss network stays in eval mode whatever the surrounding model does."""
        return super().train(False)

    def extract(self, x: Tensor) -> list[Tensor]:
        """relu1_1 … relu5_1 activations of x (B×3×H×W, in [-1, 1])."""
        feats: list[Tensor] = []
        h = x
        start = 0
        for end in _VGG_SLICE_ENDS:
            for index in range(start, end):
                h = self.features[index](h)
            feats.append(h)
            start = end
        return feats

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGGLoss expects two B×3×H×W tensors of the same shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        fx = self.extract(x)
        with torch.no_grad():
            fy = self.extract(y.detach())
        loss = x.new_zeros((), dtype=fx[0].dtype)
        for weight, a, b in zip(self.layer_weights, fx, fy):
            loss = loss + weight * F.l1_loss(a, b)
        return loss


# ---------------------------------------------------------------------------------------------------------------------
# Flow regularizers (``train_PBAFN_stage1.py``: the paper's second-order smoothness, plus TV)
# ---------------------------------------------------------------------------------------------------------------------

#: The four fixed 3×3 second-difference filters of the original code (horizontal, vertical, two diagonals), 4×1×3×3.
#: All are symmetric under a 180° rotation, so correlation (``conv2d``) equals convolution.
SECOND_DIFFERENCE_FILTERS = torch.tensor(
    [
        [[0.0, 0.0, 0.0], [1.0, -2.0, 1.0], [0.0, 0.0, 0.0]],
        [[0.0, 1.0, 0.0], [0.0, -2.0, 0.0], [0.0, 1.0, 0.0]],
        [[1.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 1.0]],
        [[0.0, 0.0, 1.0], [0.0, -2.0, 0.0], [1.0, 0.0, 0.0]],
    ]
).unsqueeze(1)


def generalized_charbonnier(d: Tensor, eps: float = 1e-3, alpha: float = 0.45) -> Tensor:
    """Elementwise ρ(d) = (d² + ε²)^α; minimum ε^(2α) at d = 0 (≈ 1.995e-3 for the defaults)."""
    return (d * d + eps * eps).pow(alpha)


def second_order_differences(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Second-difference responses of the x and y channels of a flow (the original code's ``delta_x_all/delta_y_all``).

    Args:
        flow: B×2×h×w normalized grid (channel 0 = x, 1 = y), h, w ≥ 3.

    Returns:
        (dx, dy), each B×4×(h−2)×(w−2): valid convolution with the 4 filters of :data:`SECOND_DIFFERENCE_FILTERS`.
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be B×2×h×w, got {tuple(flow.shape)}")
    b, _, h, w = flow.shape
    weight = SECOND_DIFFERENCE_FILTERS.to(device=flow.device, dtype=flow.dtype)
    responses = F.conv2d(flow.reshape(b * 2, 1, h, w), weight)  # (B·2)×4×(h−2)×(w−2)
    responses = responses.reshape(b, 2, 4, h - 2, w - 2)
    return responses[:, 0], responses[:, 1]


def second_order_smoothness(flow: Tensor, eps: float = 1e-3, alpha: float = 0.45) -> Tensor:
    """Second-order smoothness L_sec of one flow level .

    ``mean ρ(dx) + mean ρ(dy)`` with ρ the generalized Charbonnier (ε = 1e-3, α = 0.45) and dx, dy from
    :func:`second_order_differences`; each mean runs over B×4×(h−2)×(w−2). An affine flow attains the minimum
    2·ε^(2α) ≈ 3.99e-3. Flows smaller than 3×3 have no second differences and give 0 (graph kept).

    Args:
        flow: B×2×h×w normalized grid (fp32 recommended).

    Returns:
        0-dim tensor.
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be B×2×h×w, got {tuple(flow.shape)}")
    if flow.shape[-2] < 3 or flow.shape[-1] < 3:
        return flow.sum() * 0.0
    dx, dy = second_order_differences(flow)
    return generalized_charbonnier(dx, eps, alpha).mean() + generalized_charbonnier(dy, eps, alpha).mean()


def total_variation(offset: Tensor) -> Tensor:
    """Anisotropic TV of the original ``TVLoss``: mean |∂h offset| + mean |∂w offset| over the last two dims.

    Args:
        offset: …×h×w tensor (normally a B×2×h×w raw pixel-offset map). A dimension of size 1 contributes 0.

    Returns:
        0-dim tensor.
    """
    if offset.dim() < 2:
        raise ValueError(f"offset must have at least 2 dims (…×h×w), got {tuple(offset.shape)}")
    total = offset.sum() * 0.0
    if offset.shape[-2] > 1:
        total = total + (offset[..., 1:, :] - offset[..., :-1, :]).abs().mean()
    if offset.shape[-1] > 1:
        total = total + (offset[..., :, 1:] - offset[..., :, :-1]).abs().mean()
    return total


# ---------------------------------------------------------------------------------------------------------------------
# Warping loss (every stage of ``PF-AFN_train/``)
# ---------------------------------------------------------------------------------------------------------------------

def _field(out: Any, name: str, *, required: bool = True) -> Any:
    """``out.name``; a missing attribute (or a None one, when required) means intermediates were not requested."""
    value = getattr(out, name, None)
    if value is None and (required or not hasattr(out, name)):
        raise TypeError(
            f"{type(out).__name__}.{name} is missing or None: pass a WarpOutput computed with intermediates=True"
        )
    return value


def _resize_like(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear (align_corners=False) resize to ``size`` = (h, w); identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def warp_loss(
    out: Any,
    target_garment: Tensor,
    target_mask: Tensor,
    vgg: VGGLoss | None = None,
    *,
    vgg_weight: float = 0.2,
    mask_weight: float = 2.0,
    smooth_weight: float = 6.0,
    tv_weight: float = 0.01,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Multi-level warping loss L_warp of the original ``train_PBAFN_stage1.py``.

    ``Σ_i (i+1)·[L1(x_i, t_i) + 0.2·VGG(x_i, t_i) + 2·L1(m_i, s_i) + 6·L_sec(flow_i)] + 0.01·Σ_offsets TV(Δ)``
    with i = 0..4 coarse→fine, and t_i, s_i the targets bilinearly downscaled (align_corners=False, no antialias)
    to level i's size (a factor 0.5^(4−i) for the published pyramid).

    Args:
        out: ``WarpOutput``-like with ``warped_garments`` (5 × B×3×h×w), ``warped_masks`` (5 × B×1×h×w),
            ``flows`` (5 × B×2×h×w) and ``offsets`` (10 × B×2×h×w), lists coarse→fine.
        target_garment: B×3×H×W in [-1, 1], the garment region of the real person (``person_clothes``).
        target_mask: B×1×H×W in [0, 1], the garment region mask (``person_clothes_edge``).
        vgg: the perceptual loss; ``None`` skips the VGG term.
        vgg_weight, mask_weight, smooth_weight, tv_weight: term weights (published: 0.2, 2, 6, 0.01).

    Returns:
        (loss, parts) with parts keys ``l1``, ``vgg``, ``mask``, ``smooth``, ``tv``, ``total`` (weighted
        contributions, detached 0-dim tensors).
    """
    garments = list(_field(out, "warped_garments"))
    flows = list(_field(out, "flows"))
    offsets = list(_field(out, "offsets"))
    masks = _field(out, "warped_masks", required=False)
    if not garments or len(flows) != len(garments):
        raise ValueError(f"need one flow per warped garment level, got {len(garments)} garments, {len(flows)} flows")
    use_mask = mask_weight != 0.0
    if use_mask:
        if masks is None:
            raise ValueError("out.warped_masks is None: run the warp with garment_mask to train with the mask term")
        masks = list(masks)
        if len(masks) != len(garments):
            raise ValueError(f"{len(masks)} warped masks for {len(garments)} levels")
    target_garment = target_garment.detach()
    target_mask = target_mask.detach()

    zero = garments[-1].new_zeros((), dtype=torch.float32)
    l1_term, vgg_term, mask_term, smooth_term = zero, zero, zero, zero
    for i, warped in enumerate(garments):
        level_weight = float(i + 1)
        size = warped.shape[-2:]
        target_i = _resize_like(target_garment, size)
        l1_term = l1_term + level_weight * F.l1_loss(warped, target_i)
        if vgg is not None and vgg_weight != 0.0:
            vgg_term = vgg_term + level_weight * vgg_weight * vgg(warped, target_i)
        if use_mask:
            mask_term = mask_term + level_weight * mask_weight * F.l1_loss(masks[i], _resize_like(target_mask, size))
        if smooth_weight != 0.0:
            smooth_term = smooth_term + level_weight * smooth_weight * second_order_smoothness(flows[i])
    tv_term = zero
    if tv_weight != 0.0:
        for offset in offsets:
            tv_term = tv_term + tv_weight * total_variation(offset)

    loss = l1_term + vgg_term + mask_term + smooth_term + tv_term
    parts = {"l1": l1_term, "vgg": vgg_term, "mask": mask_term, "smooth": smooth_term, "tv": tv_term, "total": loss}
    return loss, {k: v.detach() for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Adjustable knowledge distillation (``train_PFAFN_stage1.py``, ``train_PFAFN_e2e.py``)
# ---------------------------------------------------------------------------------------------------------------------

#: Feature-distillation weights (5−i)·0.04, coarse→fine.
FEATURE_DISTILL_WEIGHTS = (0.20, 0.16, 0.12, 0.08, 0.04)
#: Flow-distillation levels and weights (i+1): levels 2, 3, 4 (H/4, H/2, H).
FLOW_DISTILL_LEVELS = (2, 3, 4)


@torch.no_grad()
def distillation_gate(tutor_warped: Tensor, student_warped: Tensor, target_garment: Tensor) -> Tensor:
    """Per-sample gate of adjustable KD: 1 where the tutor warps better than the student, else 0.

    e = mean |warped − target| over C×H×W per sample; w = 1 iff e_tutor < e_student (strict).

    Args:
        tutor_warped, student_warped, target_garment: B×3×H×W in [-1, 1] (full resolution).

    Returns:
        w: float (B,) of 0/1, on the inputs' device, no gradient.
    """
    if not (tutor_warped.shape == student_warped.shape == target_garment.shape) or tutor_warped.dim() < 2:
        raise ValueError(f"shapes differ: tutor {tuple(tutor_warped.shape)}, student {tuple(student_warped.shape)}, "
                         f"target {tuple(target_garment.shape)}")
    dims = tuple(range(1, tutor_warped.dim()))
    e_tutor = (tutor_warped.float() - target_garment.float()).abs().mean(dim=dims)
    e_student = (student_warped.float() - target_garment.float()).abs().mean(dim=dims)
    return (e_tutor < e_student).to(torch.float32)


def distillation_loss(tutor_out: Any, student_out: Any, gate: Tensor) -> tuple[Tensor, Tensor]:
    """Feature and flow distillation losses of adjustable KD; tutor tensors are detached.

    - feature: ``Σ_i (5−i)·0.04 · Σ_b w_b·‖F_T,i − F_S,i‖²_b / (C·h_i·w_i·N)`` over the 5 ``person_features``
      levels (coarse→fine, weights 0.20 … 0.04), with C the actual channel count (256 published);
    - flow: ``Σ_{i=2,3,4} (i+1) · Σ_b w_b·Σ_pixels ‖flow_T,i − flow_S,i‖₂ / (h_i·w_i·N)`` over ``flows``, the norm
      taken over the 2 grid channels;
    - N = Σ w (number of gated samples), or 1 if no sample is gated.

    Args:
        tutor_out, student_out: ``WarpOutput``-like with ``person_features`` (5 × B×C×h×w) and ``flows``
            (5 × B×2×h×w), lists coarse→fine; tutor and student shapes must match.
        gate: (B,) 0/1 weights from :func:`distillation_gate`.

    Returns:
        (feature_loss, flow_loss), 0-dim tensors (gradients reach the student only).
    """
    t_feats = list(_field(tutor_out, "person_features"))
    s_feats = list(_field(student_out, "person_features"))
    t_flows = list(_field(tutor_out, "flows"))
    s_flows = list(_field(student_out, "flows"))
    if len(t_feats) != len(FEATURE_DISTILL_WEIGHTS) or len(s_feats) != len(FEATURE_DISTILL_WEIGHTS):
        raise ValueError(f"person_features must have 5 levels, got tutor {len(t_feats)}, student {len(s_feats)}")
    if min(len(t_flows), len(s_flows)) <= max(FLOW_DISTILL_LEVELS):
        raise ValueError(f"flows must have 5 levels, got tutor {len(t_flows)}, student {len(s_flows)}")
    gate = gate.detach().to(dtype=torch.float32)
    if gate.dim() != 1 or gate.shape[0] != s_feats[0].shape[0]:
        raise ValueError(f"gate must be (B,) with B={s_feats[0].shape[0]}, got {tuple(gate.shape)}")
    n = gate.sum().clamp_min(1.0)

    feature_loss = s_feats[0].new_zeros((), dtype=torch.float32)
    for weight, f_t, f_s in zip(FEATURE_DISTILL_WEIGHTS, t_feats, s_feats):
        if f_t.shape != f_s.shape:
            raise ValueError(f"tutor/student person feature shapes differ: {tuple(f_t.shape)} vs {tuple(f_s.shape)}")
        _, c, h, w = f_s.shape
        per_sample = (f_t.detach().float() - f_s.float()).pow(2).sum(dim=(1, 2, 3))
        g = gate.to(per_sample.device)
        feature_loss = feature_loss + weight * (g * per_sample).sum() / (c * h * w * n.to(per_sample.device))

    flow_loss = s_flows[0].new_zeros((), dtype=torch.float32)
    for level in FLOW_DISTILL_LEVELS:
        f_t, f_s = t_flows[level], s_flows[level]
        if f_t.shape != f_s.shape or f_s.dim() != 4 or f_s.shape[1] != 2:
            raise ValueError(f"flows at level {level} must both be B×2×h×w, got {tuple(f_t.shape)} and "
                             f"{tuple(f_s.shape)}")
        h, w = f_s.shape[-2:]
        # vector_norm's backward is 0 (not NaN) where the difference is exactly 0.
        per_sample = torch.linalg.vector_norm(f_t.detach().float() - f_s.float(), ord=2, dim=1).sum(dim=(1, 2))
        g = gate.to(per_sample.device)
        flow_loss = flow_loss + float(level + 1) * (g * per_sample).sum() / (h * w * n.to(per_sample.device))
    return feature_loss, flow_loss


# ---------------------------------------------------------------------------------------------------------------------
# Generator losses (``train_PBAFN_e2e.py``, ``train_PFAFN_e2e.py``)
# ---------------------------------------------------------------------------------------------------------------------

def _check_images(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()) or len(first) != 4:
        raise ValueError(f"expected B×3×H×W tensors of one shape, got {shapes}")


def _common_gen_terms(
    p_tryon: Tensor, p_rendered: Tensor, composite_mask: Tensor, real: Tensor, vgg: VGGLoss | None
) -> dict[str, Tensor]:
    real = real.detach()
    zero = p_tryon.new_zeros((), dtype=torch.float32)
    return {
        "l1_tryon": 5.0 * F.l1_loss(p_tryon, real),
        "vgg_tryon": vgg(p_tryon, real) if vgg is not None else zero,
        "l1_rendered": 5.0 * F.l1_loss(p_rendered, real),
        "vgg_rendered": vgg(p_rendered, real) if vgg is not None else zero,
        "mask": (1.0 - composite_mask).abs().mean(),
    }


def _with_total(terms: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    loss = sum(terms.values(), start=next(iter(terms.values())).new_zeros(()))
    parts = {k: v.detach() for k, v in terms.items()}
    parts["total"] = loss.detach()
    return loss, parts


def parser_based_gen_loss(
    p_tryon: Tensor,
    p_rendered: Tensor,
    composite_mask: Tensor,
    real: Tensor,
    vgg: VGGLoss | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Tutor (PB e2e) generator loss (``train_PBAFN_e2e.py``).

    ``5·L1(p_tryon, I) + VGG(p_tryon, I) + 5·L1(p_rendered, I) + VGG(p_rendered, I) + mean|1 − m|``.

    Args:
        p_tryon: B×3×H×W in [-1, 1], the composed try-on.
        p_rendered: B×3×H×W in [-1, 1], the generator's rendered image (tanh output).
        composite_mask: B×1×H×W in [0, 1], m = sigmoid·warped_edge·person_clothes_edge.
        real: B×3×H×W in [-1, 1], the real person image I.
        vgg: perceptual loss; ``None`` skips both VGG terms.

    Returns:
        (loss, parts) with parts keys ``l1_tryon``, ``vgg_tryon``, ``l1_rendered``, ``vgg_rendered``, ``mask``,
        ``total`` (weighted contributions, detached).
    """
    _check_images(p_tryon=p_tryon, p_rendered=p_rendered, real=real)
    return _with_total(_common_gen_terms(p_tryon, p_rendered, composite_mask, real, vgg))


def skin_loss_weights(epoch: int, switch_epoch: int = 50) -> tuple[float, float]:
    """(a, b) weights of the PF skin terms: (30, 2) for ``epoch < switch_epoch``, else (60, 4)."""
    return (30.0, 2.0) if epoch < switch_epoch else (60.0, 4.0)


def parser_free_gen_loss(
    p_tryon: Tensor,
    p_rendered: Tensor,
    composite_mask: Tensor,
    real: Tensor,
    skin_mask: Tensor,
    epoch: int,
    vgg: VGGLoss | None = None,
    *,
    switch_epoch: int = 50,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Student (PF e2e) generator loss (``train_PBAFN_e2e.py``).

    ``gen_PB + a·L1(p_rendered·skin, I·skin) + b·VGG(p_rendered·skin, I·skin)`` with
    (a, b) = :func:`skin_loss_weights` ``(epoch, switch_epoch)``.

    Args:
        p_tryon, p_rendered, real: B×3×H×W in [-1, 1] (see :func:`parser_based_gen_loss`).
        composite_mask: B×1×H×W in [0, 1] (still multiplied by the parsing mask during training).
        skin_mask: B×1×H×W in [0, 1], warped unpaired edge × (1 − person_clothes_edge); broadcast over channels.
        epoch: 0-based training epoch of the PF e2e stage.
        vgg: perceptual loss; ``None`` skips every VGG term.
        switch_epoch: first epoch using (60, 4) (published: 50).

    Returns:
        (loss, parts) with the PB keys plus ``l1_skin``, ``vgg_skin`` and ``total``.
    """
    _check_images(p_tryon=p_tryon, p_rendered=p_rendered, real=real)
    a, b = skin_loss_weights(epoch, switch_epoch)
    terms = _common_gen_terms(p_tryon, p_rendered, composite_mask, real, vgg)
    skin = skin_mask.detach()
    rendered_skin = p_rendered * skin
    real_skin = real.detach() * skin
    terms["l1_skin"] = a * F.l1_loss(rendered_skin, real_skin)
    if vgg is not None:
        terms["vgg_skin"] = b * vgg(rendered_skin, real_skin)
    else:
        terms["vgg_skin"] = p_tryon.new_zeros((), dtype=torch.float32)
    return _with_total(terms)
