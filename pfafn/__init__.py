"""PF-AFN virtual try-on: the model library (pure PyTorch, no Ray).

The main entry points are re-exported lazily, so ``import pfafn`` (or a light submodule such as ``pfafn.imageio``)
does not pay for importing torch until one of them is used::

    import pfafn
    model = pfafn.load_official("warp_model_final.pth", "gen_model_final.pth")
    out = model(person, garment, garment_mask)   # out.tryon: B×3×H×W in [-1, 1]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "TryOnModel": "pfafn.tryon",
    "TryOnOutput": "pfafn.tryon",
    "compose_tryon": "pfafn.tryon",
    "check_image_size": "pfafn.tryon",
    "load_official": "pfafn.tryon",
    "NetworkWidths": "pfafn.nn.afwm",
    "AFWM": "pfafn.nn.afwm",
    "WarpOutput": "pfafn.nn.afwm",
    "ResUnetGenerator": "pfafn.nn.generator",
    "CheckpointError": "pfafn.checkpoint",
    "LoadedCheckpoint": "pfafn.checkpoint",
    "save_checkpoint": "pfafn.checkpoint",
    "load_checkpoint": "pfafn.checkpoint",
    "load_student": "pfafn.checkpoint",
    "export_official": "pfafn.checkpoint",
    "InferenceMode": "pfafn.inference",
    "TryOnPredictor": "pfafn.inference",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from pfafn.checkpoint import (
        CheckpointError,
        LoadedCheckpoint,
        export_official,
        load_checkpoint,
        load_student,
        save_checkpoint,
    )
    from pfafn.inference import InferenceMode, TryOnPredictor
    from pfafn.nn.afwm import AFWM, NetworkWidths, WarpOutput
    from pfafn.nn.generator import ResUnetGenerator
    from pfafn.tryon import TryOnModel, TryOnOutput, check_image_size, compose_tryon, load_official


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pfafn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
