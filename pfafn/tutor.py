"""The parser-based tutor (PB-AFN): AFWM(45) + ResUnetGenerator(8, 4) on the human representation.

The tutor sees what the student never will: parsing, DensePose and pose (``PF-AFN_train/data/aligned_dataset.py``). Its inputs per person are
built by :mod:`pfafn.person`:

- warp person branch: ``tutor_warp_input(parsing, densepose, keypoints)`` — 45 channels;
- generator: ``[preserve_region RGB(3), warped garment(3), warped edge(1), dense_preserve_mask(1)]``.

``TutorModel.forward`` runs both and composes exactly like the published training scripts:

- ``cloth_region="parsing"`` (stage 2, PB end-to-end with the paired garment): the dense preserve mask excludes the
  parsing's clothes region {4};
- ``cloth_region="warped"`` (stages 3/4, the fake image of the person wearing *another* garment): it excludes the
  warped garment's edge instead (``dense_preserve_mask * (1 - warped_prod_edge_un)``).

The warped edge is ``grid_sample(binary mask, flow, zeros)`` — the ``warped_mask`` of :class:`WarpOutput`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from pfafn.nn.afwm import AFWM, NetworkWidths, WarpOutput
from pfafn.nn.generator import ResUnetGenerator
from pfafn.person import tutor_gen_input, tutor_gen_preserve
from pfafn.tryon import compose_tryon

__all__ = ["TutorModel", "TutorOutput", "TUTOR_WARP_CHANNELS", "TUTOR_GEN_CHANNELS"]

TUTOR_WARP_CHANNELS = 45
TUTOR_GEN_CHANNELS = 8


@dataclass
class TutorOutput:
    """One tutor forward; images B×3×H×W in [-1, 1], masks B×1×H×W in [0, 1], all fp32.

    Attributes:
        tryon: the composed image (the "fake" person when the garment is unpaired).
        rendered: tanh of the generator's RGB output.
        composite_mask: sigmoid(logit) × warped mask (× ``composite_region`` when given).
        warp: the warp module's full output (``intermediates`` as requested).
    """

    tryon: Tensor
    rendered: Tensor
    composite_mask: Tensor
    warp: WarpOutput

    @property
    def warped_garment(self) -> Tensor:
        return self.warp.warped_garment

    @property
    def warped_mask(self) -> Tensor:
        return self.warp.warped_mask


class TutorModel(nn.Module):
    """PB-AFN. Children ``warp`` (AFWM(45)) and ``gen`` (ResUnetGenerator(8, 4)) — the tutor checkpoint's keys."""

    def __init__(self, widths: NetworkWidths = NetworkWidths()) -> None:
        super().__init__()
        self.widths = widths
        self.warp = AFWM(TUTOR_WARP_CHANNELS, widths)
        self.gen = ResUnetGenerator(TUTOR_GEN_CHANNELS, 4, ngf=widths.ngf)

    def forward(
        self,
        person_representation: Tensor,
        image: Tensor,
        parsing: Tensor,
        densepose: Tensor,
        garment: Tensor,
        garment_mask: Tensor,
        *,
        cloth_region: Literal["parsing", "warped"] = "warped",
        composite_region: Tensor | None = None,
        intermediates: bool = False,
    ) -> TutorOutput:
        """Warp ``garment`` onto the person and render the tutor's try-on.

        Args:
            person_representation: B×45×H×W from :func:`pfafn.person.tutor_warp_input`.
            image: B×3×H×W the real person photo in [-1, 1] (for the preserved regions).
            parsing: B×H×W integer 14-class labels; densepose: B×H×W integer part ids 0..24.
            garment: B×3×H×W in [-1, 1]; garment_mask: B×1×H×W in [0, 1] (binarized at 0.5 here).
            cloth_region: which region the dense preserve mask excludes (see the module docstring).
            composite_region: optional B×1×H×W multiplier of the composition mask (PB training uses the
                parsing's clothes region, ``PF-AFN_train/train_PBAFN_e2e.py``).
            intermediates: return the warp's per-level training outputs.
        """
        binary = (garment_mask > 0.5).to(garment.dtype)
        warp = self.warp(person_representation, garment * binary, binary, intermediates=intermediates)
        target = warp.warped_mask if cloth_region == "warped" else None
        preserve = tutor_gen_preserve(image, parsing, densepose, target_cloth_mask=target)
        gen_out = self.gen(tutor_gen_input(preserve, warp.warped_garment, warp.warped_mask))
        mask = warp.warped_mask if composite_region is None else warp.warped_mask * composite_region
        tryon, rendered, composite = compose_tryon(gen_out, warp.warped_garment, mask)
        return TutorOutput(tryon=tryon, rendered=rendered, composite_mask=composite, warp=warp)

    @classmethod
    def from_checkpoint(cls, loaded) -> "TutorModel":
        """Wrap a tutor :class:`pfafn.checkpoint.LoadedCheckpoint` (sharing its modules)."""
        if loaded.kind != "tutor":
            raise ValueError(f"expected a tutor checkpoint, got a {loaded.kind}")
        with torch.device("meta"):
            model = cls(loaded.widths)
        model.warp = loaded.warp
        model.gen = loaded.gen
        return model.train(loaded.warp.training)
