"""The parser-free PF-AFN try-on model: AFWM(3) + ResUnetGenerator(7, 4) and the published test pipeline.

``TryOnModel(person, garment, garment_mask)`` reproduces ``PF-AFN_test/test.py``:

1. binarize the mask (``mask > 0.5``) and multiply the garment by it (background → 0, mid-gray in [-1, 1]);
2. ``warp(person, garment)`` → warped garment (border padding) and flow;
3. warp the binary mask with the same flow, zeros padding;
4. generator on ``cat[person, warped garment, warped mask]`` (7 channels);
5. ``rendered = tanh(out[:, :3])``, ``m = sigmoid(out[:, 3:4]) * warped_mask``;
6. ``tryon = warped_garment * m + rendered * (1 - m)``.

BatchNorm must be in eval mode at inference (``load_official`` returns an eval-mode model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO, Sequence

import torch
from torch import Tensor, nn

from pfafn.nn.afwm import AFWM, NetworkWidths, WarpOutput, check_image_size
from pfafn.nn.flow import fp32_region
from pfafn.nn.generator import ResUnetGenerator

__all__ = ["TryOnModel", "TryOnOutput", "compose_tryon", "check_image_size", "load_official"]


@dataclass
class TryOnOutput:
    """Result of one try-on batch; all fp32.

    Attributes:
        tryon: B×3×H×W final image in [-1, 1].
        warped_garment: B×3×H×W garment warped onto the person (border padding).
        warped_mask: B×1×H×W binary garment mask warped with zeros padding, in [0, 1].
        flow: B×2×H×W normalized sampling grid, channel 0 = x (align_corners=True convention).
        rendered: B×3×H×W generator rendering, tanh, in [-1, 1].
        composite_mask: B×1×H×W ``sigmoid(logit) * warped_mask``, in [0, 1].
        blend_mask: B×1×H×W ``sigmoid(logit)`` before the multiplication by ``warped_mask``: the generator's own
            part of the composition, which :mod:`pfafn.fullres` combines with a full-resolution warped mask.
    """

    tryon: Tensor
    warped_garment: Tensor
    warped_mask: Tensor
    flow: Tensor
    rendered: Tensor
    composite_mask: Tensor
    blend_mask: Tensor


def _compose(gen_out: Tensor, warped_garment: Tensor, warped_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`compose_tryon` plus the ``sigmoid(logit)`` factor of its composition mask."""
    with fp32_region(gen_out.device):
        gen_out = gen_out.float()
        rendered = torch.tanh(gen_out[:, :3])
        blend_mask = torch.sigmoid(gen_out[:, 3:4])
        composite_mask = blend_mask * warped_mask.float()
        tryon = warped_garment.float() * composite_mask + rendered * (1 - composite_mask)
    return tryon, rendered, composite_mask, blend_mask


def compose_tryon(gen_out: Tensor, warped_garment: Tensor, warped_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Published composition.  Returns ``(tryon, rendered, composite_mask)``, computed in fp32.

    Args:
        gen_out: B×4×H×W raw generator output.
        warped_garment: B×3×H×W in [-1, 1].
        warped_mask: B×1×H×W in [0, 1].
    """
    return _compose(gen_out, warped_garment, warped_mask)[:3]


def _check_pair(person: Tensor, garment: Tensor, garment_mask: Tensor) -> None:
    for name, t, c in (("person", person, 3), ("garment", garment, 3), ("garment_mask", garment_mask, 1)):
        if t.dim() != 4 or t.shape[1] != c:
            raise ValueError(f"{name} must be B×{c}×H×W, got {tuple(t.shape)}")
    if not (person.shape[-2:] == garment.shape[-2:] == garment_mask.shape[-2:]):
        raise ValueError(
            f"person, garment and garment_mask must have the same H×W, got {tuple(person.shape)}, "
            f"{tuple(garment.shape)}, {tuple(garment_mask.shape)}"
        )
    check_image_size(person.shape[-2], person.shape[-1])


class TryOnModel(nn.Module):
    """Parser-free PF-AFN: ``warp = AFWM(3)`` and ``gen = ResUnetGenerator(7, 4)``.

    Inputs: person and garment B×3×H×W in [-1, 1], garment mask B×1×H×W in [0, 1] (binarized at 0.5 here);
    H, W multiples of 32 (256×192 published).  Output: :class:`TryOnOutput`.
    """

    def __init__(self, widths: NetworkWidths = NetworkWidths()) -> None:
        super().__init__()
        self.widths = widths
        self.warp = AFWM(3, widths)
        self.gen = ResUnetGenerator(7, 4, num_downs=5, ngf=widths.ngf)

    @staticmethod
    def prepare_garment(garment: Tensor, garment_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(garment * binary_mask, binary_mask)`` with ``binary_mask = (mask > 0.5)`` as float (published)."""
        binary_mask = (garment_mask > 0.5).to(garment.dtype)
        return garment * binary_mask, binary_mask

    def render(self, person: Tensor, warped: WarpOutput) -> TryOnOutput:
        """Generator + composition from a warp result that carries ``warped_mask``."""
        gen_in = torch.cat([person, warped.warped_garment.to(person.dtype), warped.warped_mask.to(person.dtype)], 1)
        tryon, rendered, composite_mask, blend_mask = _compose(self.gen(gen_in), warped.warped_garment,
                                                               warped.warped_mask)
        return TryOnOutput(
            tryon=tryon,
            warped_garment=warped.warped_garment,
            warped_mask=warped.warped_mask,
            flow=warped.flow,
            rendered=rendered,
            composite_mask=composite_mask,
            blend_mask=blend_mask,
        )

    def from_features(
        self,
        person: Tensor,
        person_pyramid: Sequence[Tensor],
        masked_garment: Tensor,
        binary_mask: Tensor,
        garment_pyramid: Sequence[Tensor],
    ) -> TryOnOutput:
        """Try-on from precomputed encodings, for reusing them across the pairs of a catalog tile.

        Args:
            person: B×3×H×W person in [-1, 1]; ``person_pyramid = self.warp.encode_person(person)``.
            masked_garment, binary_mask: from :meth:`prepare_garment`;
                ``garment_pyramid = self.warp.encode_garment(masked_garment)``.
        All batch sizes must match (``Tensor.expand`` a single garment's tensors to B; with BN in eval mode the
        encodings do not depend on the rest of the batch).  Equal to ``forward`` for the same pair.
        """
        _check_pair(person, masked_garment, binary_mask)
        warped = self.warp.warp_from_features(masked_garment, garment_pyramid, person_pyramid, binary_mask)
        return self.render(person, warped)

    def forward(self, person: Tensor, garment: Tensor, garment_mask: Tensor) -> TryOnOutput:
        _check_pair(person, garment, garment_mask)
        masked_garment, binary_mask = self.prepare_garment(garment, garment_mask)
        warped = self.warp(person, masked_garment, binary_mask)
        return self.render(person, warped)


def load_official(
    warp_checkpoint: str | os.PathLike | bytes | BinaryIO,
    gen_checkpoint: str | os.PathLike | bytes | BinaryIO,
    map_location: str | torch.device = "cpu",
) -> TryOnModel:
    """Load the published ``warp_model_final.pth`` + ``gen_model_final.pth`` into an eval-mode :class:`TryOnModel`.

    Sources may be local paths, ``file://`` / ``s3://`` URIs (fsspec), bytes or binary file-likes.  Keys with a
    ``module.`` prefix and the training-only ``aflow_net.weight`` (4×1×3×3) are accepted; widths are inferred
    from the tensor shapes (reduced-width checkpoints in the official layout load too).  Raises
    :class:`pfafn.checkpoint.CheckpointError` naming missing / unexpected / mis-shaped keys.
    """
    from pfafn.checkpoint import build_tryon_model, read_state_dict

    warp_state = read_state_dict(warp_checkpoint, map_location="cpu", what="warp checkpoint")
    gen_state = read_state_dict(gen_checkpoint, map_location="cpu", what="generator checkpoint")
    return build_tryon_model(warp_state, gen_state, copy=False).to(map_location).eval()
