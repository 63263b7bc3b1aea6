"""PF-AFN networks in pure PyTorch (no CuPy, no Ray): warping module AFWM and the ResUnet generator.

Module attribute names reproduce the published checkpoint keys; see ``pfafn.checkpoint`` / ``pfafn.load_official``
to load ``warp_model_final.pth`` and ``gen_model_final.pth``.
"""

from .afwm import (
    AFWM,
    NUM_LEVELS,
    AFlowNet,
    DownSample,
    FeatureEncoder,
    NetworkWidths,
    RefinePyramid,
    ResBlock,
    WarpOutput,
    check_image_size,
)
from .correlation import local_correlation
from .flow import compose_flows, fp32_region, identity_grid, offset_to_grid, upsample_flow, warp
from .generator import ResidualBlock, ResUnetGenerator, ResUnetSkipConnectionBlock

__all__ = [
    "AFWM",
    "AFlowNet",
    "DownSample",
    "FeatureEncoder",
    "NUM_LEVELS",
    "NetworkWidths",
    "RefinePyramid",
    "ResBlock",
    "ResUnetGenerator",
    "ResUnetSkipConnectionBlock",
    "ResidualBlock",
    "WarpOutput",
    "check_image_size",
    "compose_flows",
    "fp32_region",
    "identity_grid",
    "local_correlation",
    "offset_to_grid",
    "upsample_flow",
    "warp",
]
