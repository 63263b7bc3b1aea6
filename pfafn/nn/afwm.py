"""The PF-AFN appearance-flow warping module (AFWM) and its parts.

Faithful to ``PF-AFN_test/models/afwm.py`` / ``PF-AFN_train/models/afwm.py``: module attribute names
are the published state_dict keys, so ``AFWM(3).load_state_dict(torch.load("warp_model_final.pth"))`` works
(420 tensors, 29,304,416 parameters; the 45-channel tutor has 29,328,692).  The CuPy correlation is replaced by
:func:`pfafn.nn.correlation.local_correlation` and every ``grid_sample`` passes ``align_corners=True``.

What was checked against the original module definitions (tests/test_nn.py pins it): key names, tensor count and shapes for
AFWM(3) and AFWM(45), parameter counts, the correlation formula (against a per-pixel loop), the identity warp, and
the per-level loop: detached pre-warp before the correlation, LeakyReLU(0.1) on the cost volume, netMain offset →
grid → compose with the previous grid, refine on [warped garment feature, person feature] with the *original*
garment feature, second composition, bilinear ×2 upsampling of the grid (align_corners=False, values unchanged).

Shapes: images are B×C×H×W with H, W multiples of 32 and at least 64 (five stride-2 levels; the coarsest level
must be at least 2×2 for the ``(size - 1) / 2`` normalization).  Images are in [-1, 1], masks in [0, 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .correlation import local_correlation
from .flow import compose_flows, fp32_region, like, offset_to_grid, upsample_flow, warp

__all__ = [
    "NUM_LEVELS",
    "NetworkWidths",
    "check_image_size",
    "DownSample",
    "ResBlock",
    "FeatureEncoder",
    "RefinePyramid",
    "AFlowNet",
    "AFWM",
    "WarpOutput",
]

NUM_LEVELS = 5
MAX_DISPLACEMENT = 3
CORRELATION_CHANNELS = (2 * MAX_DISPLACEMENT + 1) ** 2  # 49


def check_image_size(height: int, width: int) -> None:
    """Raise ``ValueError`` unless H and W are multiples of 32 and at least 64.

    PF-AFN has five stride-2 levels (so 32 | H, W) and normalizes pixel coordinates by ``(size - 1) / 2`` at the
    coarsest level H/32 × W/32 (so that level needs at least 2 pixels per side).
    """
    if height % 32 or width % 32 or height < 64 or width < 64:
        raise ValueError(
            f"PF-AFN needs image height and width that are multiples of 32 and at least 64 "
            f"(e.g. 256×192, 512×384, 1024×768); got {height}×{width}. Resize or pad the images first."
        )


@dataclass(frozen=True)
class NetworkWidths:
    """Channel widths of AFWM and the generator.  The defaults are the published ones.

    Attributes:
        encoder_channels: output channels of the 5 FeatureEncoder levels, fine → coarse.
        fpn_dim: channels of every RefinePyramid level (and so the correlation / refine inputs).
        flow_channels: hidden widths of each netMain / netRefine stack.
        ngf: base width of ResUnetGenerator (levels use ngf, 2ngf, 4ngf, 8ngf, 8ngf).
    """

    encoder_channels: tuple[int, ...] = (64, 128, 256, 256, 256)
    fpn_dim: int = 256
    flow_channels: tuple[int, int, int] = (128, 64, 32)
    ngf: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_channels", tuple(int(c) for c in self.encoder_channels))
        object.__setattr__(self, "flow_channels", tuple(int(c) for c in self.flow_channels))
        if len(self.encoder_channels) != NUM_LEVELS:
            raise ValueError(f"encoder_channels needs {NUM_LEVELS} entries, got {self.encoder_channels}")
        if len(self.flow_channels) != 3:
            raise ValueError(f"flow_channels needs 3 entries, got {self.flow_channels}")
        if min(self.encoder_channels + self.flow_channels + (self.fpn_dim, self.ngf)) < 1:
            raise ValueError(f"all widths must be positive: {self}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> NetworkWidths:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class DownSample(nn.Module):
    """BN → ReLU → Conv3×3 stride 2 (no bias).  Keys ``block.0`` (BN), ``block.2`` (conv)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + (BN → ReLU → Conv3×3 → BN → ReLU → Conv3×3)(x)``, no final activation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) + x


class FeatureEncoder(nn.Module):
    """Five levels of DownSample + 2 ResBlocks.

    Input B×``in_channels``×H×W; output list of 5 features fine → coarse: level i is B×channels[i]×H/2^(i+1)×W/2^(i+1).
    Keys ``encoders.{i}.{0: DownSample, 1, 2: ResBlock}``.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (64, 128, 256, 256, 256)) -> None:
        super().__init__()
        encoders = []
        for i, out_channels in enumerate(channels):
            prev = in_channels if i == 0 else channels[i - 1]
            encoders.append(nn.Sequential(DownSample(prev, out_channels), ResBlock(out_channels), ResBlock(out_channels)))
        self.encoders = nn.ModuleList(encoders)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for encoder in self.encoders:
            x = encoder(x)
            features.append(x)
        return features


class RefinePyramid(nn.Module):
    """Top-down FPN over the encoder features.

    ``adaptive[j]`` (1×1 conv with bias) and ``smooth[j]`` (3×3 conv with bias) are indexed from the coarsest level
    (j = 0).  Level j = ``smooth[j](adaptive[j](c_j) + nearest×2(previous smoothed level))``.

    Input: the encoder list fine → coarse.  Output: tuple of 5 B×fpn_dim×h×w features, fine → coarse.
    """

    def __init__(self, channels: Sequence[int] = (64, 128, 256, 256, 256), fpn_dim: int = 256) -> None:
        super().__init__()
        self.adaptive = nn.ModuleList(nn.Conv2d(c, fpn_dim, kernel_size=1) for c in reversed(channels))
        self.smooth = nn.ModuleList(nn.Conv2d(fpn_dim, fpn_dim, kernel_size=3, padding=1) for _ in channels)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, ...]:
        outputs = []
        last = None
        for adaptive, smooth, feature in zip(self.adaptive, self.smooth, reversed(features)):
            x = adaptive(feature)
            if last is not None:
                x = x + F.interpolate(last, scale_factor=2, mode="nearest")
            last = smooth(x)
            outputs.append(last)
        return tuple(reversed(outputs))


def _flow_head(in_channels: int, hidden: Sequence[int]) -> nn.Sequential:
    """Conv → LReLU(0.1) → Conv → LReLU → Conv → LReLU → Conv(→2); 3×3, padding 1, bias.  Keys 0, 2, 4, 6."""
    c1, c2, c3 = hidden
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),
        nn.LeakyReLU(negative_slope=0.1, inplace=False),
        nn.Conv2d(c1, c2, kernel_size=3, padding=1),
        nn.LeakyReLU(negative_slope=0.1, inplace=False),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1),
        nn.LeakyReLU(negative_slope=0.1, inplace=False),
        nn.Conv2d(c3, 2, kernel_size=3, padding=1),
    )


@dataclass
class WarpOutput:
    """What AFWM returns.  Flows are fp32 normalized sampling grids, channel 0 = x.

    Always set:
        warped_garment: B×3×H×W, the garment warped with ``flow`` (border padding).
        flow: B×2×H×W, the final flow.
        warped_mask: B×1×H×W (zeros padding) when a garment mask was given, else None.

    Only with ``intermediates=True`` (otherwise None), the published training outputs:
        person_features: 5 person-branch FPN features, coarse → fine (B×fpn×H/32… H/2), ``cond_fea_all``.
        flows: 5 flows after each level, upsampled ×2: H/16×W/16 … H×W (``last_flow_all``; the last is ``flow``).
        offsets: 10 raw pixel offsets B×2×h×w, (netMain Δ, netRefine Δr) per level coarse → fine (``delta_list``).
        warped_garments: 5 garments bilinearly downscaled to each flow's size and warped, border (``x_all``).
        warped_masks: the same for the mask with zeros padding (``x_edge_all``); None without a mask.
    """

    warped_garment: Tensor
    flow: Tensor
    warped_mask: Tensor | None = None
    person_features: list[Tensor] | None = None
    flows: list[Tensor] | None = None
    offsets: list[Tensor] | None = None
    warped_garments: list[Tensor] | None = None
    warped_masks: list[Tensor] | None = None


class AFlowNet(nn.Module):
    """Cascaded coarse-to-fine flow estimation.

    ``netMain[j]`` maps the 49-channel cost volume to a pixel offset, ``netRefine[j]`` maps
    [warped garment feature, person feature] (2·fpn_dim channels) to a refinement offset; j = 0 is the coarsest level.
    The 2-channel offset convolutions run in fp32 even under autocast (they *are* the flow).
    """

    def __init__(
        self, num_pyramid: int = NUM_LEVELS, fpn_dim: int = 256, hidden_channels: Sequence[int] = (128, 64, 32)
    ) -> None:
        super().__init__()
        self.netMain = nn.ModuleList(_flow_head(CORRELATION_CHANNELS, hidden_channels) for _ in range(num_pyramid))
        self.netRefine = nn.ModuleList(_flow_head(2 * fpn_dim, hidden_channels) for _ in range(num_pyramid))

    def offset_convs(self) -> list[nn.Conv2d]:
        """The last (→ 2 channel) conv of every head: it computes the flow itself and always runs in fp32, so an
        inference-only weight cast (``pfafn.fuse.cast_conv_weights``) leaves it alone."""
        return [head[-1] for heads in (self.netMain, self.netRefine) for head in heads]

    @staticmethod
    def _offset(head: nn.Sequential, x: Tensor) -> Tensor:
        """Run a netMain / netRefine stack; its last (→2 channel) conv in fp32: the output is a pixel offset."""
        for i in range(len(head) - 1):
            x = head[i](x)
        last = head[-1]
        with fp32_region(x.device):
            return F.conv2d(x.float(), last.weight.float(), last.bias.float(), padding=last.padding)

    def forward(
        self,
        garment: Tensor,
        garment_pyramid: Sequence[Tensor],
        person_pyramid: Sequence[Tensor],
        garment_mask: Tensor | None = None,
        intermediates: bool = False,
    ) -> WarpOutput:
        """Estimate the flow and warp the garment.

        Args:
            garment: B×3×H×W garment image in [-1, 1] (already multiplied by its mask at inference).
            garment_pyramid / person_pyramid: FPN features, fine → coarse (as returned by RefinePyramid).
            garment_mask: optional B×1×H×W mask in [0, 1], warped with zeros padding.
            intermediates: also return the per-level training outputs (see :class:`WarpOutput`).
        """
        if len(garment_pyramid) != len(self.netMain) or len(person_pyramid) != len(self.netMain):
            raise ValueError(
                f"expected {len(self.netMain)} pyramid levels, got {len(garment_pyramid)} (garment) and "
                f"{len(person_pyramid)} (person)"
            )
        last_flow = None
        person_features, flows, offsets = [], [], []
        for i in range(len(self.netMain)):
            feat_garment = garment_pyramid[-1 - i]
            feat_person = person_pyramid[-1 - i]
            if feat_garment.shape != feat_person.shape:
                raise ValueError(
                    f"level {i}: garment feature {tuple(feat_garment.shape)} and person feature "
                    f"{tuple(feat_person.shape)} differ"
                )
            # Pre-warp with the *detached* previous flow: no gradient flows into the earlier levels through
            # the correlation path (published behaviour).
            pre_warped = feat_garment if last_flow is None else warp(feat_garment, last_flow.detach())
            cost = F.leaky_relu(local_correlation(pre_warped, feat_person, MAX_DISPLACEMENT), negative_slope=0.1)
            delta = self._offset(self.netMain[i], cost.to(feat_person.dtype))
            grid = offset_to_grid(delta)
            flow = grid if last_flow is None else compose_flows(last_flow, grid)
            # Refinement warps the *original* garment feature with the new flow (not detached).
            refined_input = torch.cat([like(warp(feat_garment, flow), feat_person), feat_person], dim=1)
            delta_refine = self._offset(self.netRefine[i], refined_input)
            flow = compose_flows(flow, offset_to_grid(delta_refine))
            last_flow = upsample_flow(flow, 2)
            if intermediates:
                person_features.append(feat_person)
                flows.append(last_flow)
                offsets.extend((delta, delta_refine))

        out = WarpOutput(warped_garment=warp(garment, last_flow, "border"), flow=last_flow)
        if garment_mask is not None:
            out.warped_mask = warp(garment_mask, last_flow, "zeros")
        if intermediates:
            out.person_features = person_features
            out.flows = flows
            out.offsets = offsets
            out.warped_garments = []
            out.warped_masks = [] if garment_mask is not None else None
            n = len(flows)
            with fp32_region(garment.device):
                for i, level_flow in enumerate(flows):
                    scale = 0.5 ** (n - 1 - i)
                    out.warped_garments.append(warp(_downscale(garment, scale), level_flow, "border"))
                    if garment_mask is not None:
                        out.warped_masks.append(warp(_downscale(garment_mask, scale), level_flow, "zeros"))
        return out


def _downscale(x: Tensor, scale: float) -> Tensor:
    # Published: F.interpolate(x, scale_factor=0.5 ** (4 - i), mode='bilinear') (no antialias, align_corners=False).
    if scale == 1.0:
        return x.float()
    return F.interpolate(x.float(), scale_factor=scale, mode="bilinear", align_corners=False)


class AFWM(nn.Module):
    """Appearance-flow warping module.

    Args:
        input_nc: person-branch input channels: 3 = parser-free student (person RGB), 45 = parser-based tutor
            (2 parsing masks + 25 DensePose one-hot + 18 pose maps).
        widths: channel widths (defaults = published).

    Children (= state_dict prefixes): ``image_features`` (garment encoder, 3 ch), ``cond_features`` (person encoder),
    ``image_FPN``, ``cond_FPN``, ``aflow_net``.
    """

    def __init__(self, input_nc: int = 3, widths: NetworkWidths = NetworkWidths()) -> None:
        super().__init__()
        self.input_nc = input_nc
        self.widths = widths
        channels = widths.encoder_channels
        self.image_features = FeatureEncoder(3, channels)
        self.cond_features = FeatureEncoder(input_nc, channels)
        self.image_FPN = RefinePyramid(channels, widths.fpn_dim)
        self.cond_FPN = RefinePyramid(channels, widths.fpn_dim)
        self.aflow_net = AFlowNet(NUM_LEVELS, widths.fpn_dim, widths.flow_channels)

    @staticmethod
    def _check(x: Tensor, channels: int, what: str) -> None:
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"{what} must be B×{channels}×H×W, got {tuple(x.shape)}")
        check_image_size(x.shape[-2], x.shape[-1])

    def encode_garment(self, garment: Tensor) -> tuple[Tensor, ...]:
        """B×3×H×W garment in [-1, 1] → its FPN pyramid, fine → coarse (5 × B×fpn_dim×H/2^(i+1)×W/2^(i+1))."""
        self._check(garment, 3, "garment")
        return self.image_FPN(self.image_features(garment))

    def encode_person(self, cond: Tensor) -> tuple[Tensor, ...]:
        """B×input_nc×H×W person input → its FPN pyramid, fine → coarse."""
        self._check(cond, self.input_nc, "person input")
        return self.cond_FPN(self.cond_features(cond))

    def warp_from_features(
        self,
        garment: Tensor,
        garment_pyramid: Sequence[Tensor],
        person_pyramid: Sequence[Tensor],
        garment_mask: Tensor | None = None,
        intermediates: bool = False,
    ) -> WarpOutput:
        """Flow estimation and warping from precomputed pyramids (for reusing encodings across pairs).

        ``garment`` is the same B×3×H×W image the garment pyramid was computed from; batch sizes must match
        (expand a single garment's pyramid with ``t.expand(B, -1, -1, -1)``).
        """
        self._check(garment, 3, "garment")
        if garment_mask is not None and (garment_mask.dim() != 4 or garment_mask.shape[1] != 1
                                         or garment_mask.shape[-2:] != garment.shape[-2:]):
            raise ValueError(f"garment_mask must be B×1×H×W matching the garment, got {tuple(garment_mask.shape)}")
        return self.aflow_net(garment, garment_pyramid, person_pyramid, garment_mask, intermediates)

    def forward(
        self, cond: Tensor, garment: Tensor, garment_mask: Tensor | None = None, intermediates: bool = False
    ) -> WarpOutput:
        """Warp ``garment`` (B×3×H×W, [-1, 1]) onto the person ``cond`` (B×input_nc×H×W).  Person first, as published."""
        return self.warp_from_features(
            garment, self.encode_garment(garment), self.encode_person(cond), garment_mask, intermediates
        )
