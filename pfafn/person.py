"""The parser-based tutor's person representation (``PF-AFN_train/data/aligned_dataset.py``), numpy or torch in, torch float32 out.

Inputs are a 14-class ACGPN parsing map, a DensePose part-index map (0..24) and COCO-18 keypoints, as numpy
arrays or torch tensors. Every function accepts a single sample (parsing / DensePose ``H×W``, keypoints ``18×3``,
image ``H×W×3`` uint8 or ``3×H×W`` float) or a batch with any leading dimensions (``B×H×W``, ``B×18×3``,
``B×3×H×W``), and returns float32 tensors shaped ``(..., C, H, W)`` on the device of the (first tensor) input.
Label 7 ("noise") is merged into 4 (upper clothes) wherever the parsing is read, as the original data loader does.

The original pipeline (``PF-AFN_train/train_PFAFN_stage1.py``):

* PB warp person input, 45 channels (``tutor_warp_input``):
  ``[face_mask(1), other_clothes_mask(1), one-hot DensePose(25), pose maps(18)]``.
* PB generator input, 8 channels (``tutor_gen_input``), in this order:
  ``[preserve_region RGB(3), warped garment(3), warped edge(1), dense_preserve_mask(1)]`` with

  - ``preserve_region = image · (face_mask + other_clothes_mask + hand_mask)``, hands = arms {11, 13} ∩
    DensePose hands {3, 4}; the image is in [-1, 1], so masked-out pixels are 0 (mid grey);
  - ``dense_preserve_mask = DensePose arm parts {15..22} · (1 − target_cloth_mask)``. Stage 2 (PB end-to-end)
    uses the parsing's clothes mask {4}; stages 3/4 (tutor fakes for an unpaired garment) use the **warped
    unpaired garment edge**: ``dense_preserve_mask · (1 − warped_prod_edge_un)`` in the published code.
* Warp-loss targets (``person_clothes``): ``person_clothes = image · {4}``, ``person_clothes_edge = {4}``.

Pose maps (``pose_maps``) reproduce the original data loader's PIL drawing exactly: every keypoint with x > 1 and y > 1
becomes the filled square ``[trunc(x − r), trunc(x + r)] × [trunc(y − r), trunc(y + r)]`` (11×11 for r = 5)
of value 1 on a background of −1, one channel per keypoint (the confidence is ignored, as in the original).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pfafn.synthetic.labels import (
    ARM_LABELS,
    BACKGROUND,
    CLOTHES_LABELS,
    DP_ARM_PARTS,
    DP_HAND_PARTS,
    FACE,
    FACE_LABELS,
    HAIR,
    LEFT_ARM,
    LEFT_LEG,
    LEFT_SHOE,
    NOISE,
    NUM_DENSEPOSE_CHANNELS,
    NUM_KEYPOINTS,
    NUM_PARSING_CLASSES,
    OTHER_CLOTHES_LABELS,
    PANTS,
    PARSING_LABELS,
    RIGHT_ARM,
    RIGHT_LEG,
    RIGHT_SHOE,
    UPPER_CLOTHES,
)

__all__ = [
    # label scheme (re-exported from pfafn.synthetic.labels)
    "BACKGROUND",
    "HAIR",
    "UPPER_CLOTHES",
    "LEFT_SHOE",
    "RIGHT_SHOE",
    "NOISE",
    "PANTS",
    "LEFT_LEG",
    "RIGHT_LEG",
    "LEFT_ARM",
    "FACE",
    "RIGHT_ARM",
    "PARSING_LABELS",
    "NUM_PARSING_CLASSES",
    "FACE_LABELS",
    "OTHER_CLOTHES_LABELS",
    "CLOTHES_LABELS",
    "ARM_LABELS",
    "DP_HAND_PARTS",
    "DP_ARM_PARTS",
    "NUM_DENSEPOSE_CHANNELS",
    "NUM_KEYPOINTS",
    "TUTOR_WARP_CHANNELS",
    "TUTOR_GEN_CHANNELS",
    # functions
    "merge_noise_label",
    "label_mask",
    "face_mask",
    "other_clothes_mask",
    "person_clothes_edge",
    "arm_mask",
    "hand_mask",
    "densepose_one_hot",
    "dense_arm_mask",
    "pose_maps",
    "tutor_warp_input",
    "TutorGenPreserve",
    "tutor_gen_preserve",
    "tutor_gen_input",
    "person_clothes",
    "image_to_tensor",
]

TUTOR_WARP_CHANNELS = 2 + NUM_DENSEPOSE_CHANNELS + NUM_KEYPOINTS  # 45
TUTOR_GEN_CHANNELS = 8

ArrayLike = np.ndarray | torch.Tensor


# --- conversions ----------------------------------------------------------------------------------------------------
def _label_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """An integer label map (…, H, W) as an int64 tensor (no copy of torch inputs' device)."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "uif":
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() < 2:
        raise ValueError(f"{name} must be (..., H, W), got shape {tuple(t.shape)}")
    if t.is_floating_point():
        # label maps stored as floats (e.g. the original loader's ToTensor()*255) must hold exact integers
        rounded = torch.round(t)
        if not torch.equal(rounded, t):
            raise ValueError(f"{name} holds non-integer values")
        t = rounded
    return t.long()


def merge_noise_label(parsing: ArrayLike) -> torch.Tensor:
    """The parsing (…, H, W) as int64 with label 7 ("noise") replaced by 4 (upper clothes), as the original data loader does."""
    p = _label_tensor(parsing, "parsing")
    return torch.where(p == NOISE, torch.full_like(p, UPPER_CLOTHES), p)


def label_mask(parsing: ArrayLike, labels: tuple[int, ...] | int) -> torch.Tensor:
    """float32 (…, 1, H, W): 1 where the parsing (7 merged into 4) has one of ``labels``."""
    p = merge_noise_label(parsing)
    wanted = (labels,) if isinstance(labels, int) else tuple(labels)
    m = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
    for label in wanted:
        m |= p == label
    return m.unsqueeze(-3).float()


def face_mask(parsing: ArrayLike) -> torch.Tensor:
    """Hair and face {1, 12}: float32 (…, 1, H, W)."""
    return label_mask(parsing, FACE_LABELS)


def other_clothes_mask(parsing: ArrayLike) -> torch.Tensor:
    """Shoes, pants and legs {5, 6, 8, 9, 10}: float32 (…, 1, H, W)."""
    return label_mask(parsing, OTHER_CLOTHES_LABELS)


def person_clothes_edge(parsing: ArrayLike) -> torch.Tensor:
    """The worn upper garment {4} (with 7 merged in): float32 (…, 1, H, W) — the warp-loss mask target."""
    return label_mask(parsing, UPPER_CLOTHES)


def arm_mask(parsing: ArrayLike) -> torch.Tensor:
    """Arms {11, 13} (hands included): float32 (…, 1, H, W)."""
    return label_mask(parsing, ARM_LABELS)


def _densepose_tensor(densepose: ArrayLike) -> torch.Tensor:
    d = _label_tensor(densepose, "densepose")
    if d.numel() and (int(d.min()) < 0 or int(d.max()) >= NUM_DENSEPOSE_CHANNELS):
        raise ValueError(
            f"densepose values must be part indices 0..{NUM_DENSEPOSE_CHANNELS - 1}, "
            f"got range [{int(d.min())}, {int(d.max())}]"
        )
    return d


def densepose_one_hot(densepose: ArrayLike) -> torch.Tensor:
    """One-hot DensePose, float32 (…, 25, H, W); channel k is 1 where the part index is k (0 = background)."""
    d = _densepose_tensor(densepose)
    return torch.nn.functional.one_hot(d, NUM_DENSEPOSE_CHANNELS).movedim(-1, -3).float()


def _parts_mask(densepose: ArrayLike, parts: tuple[int, ...]) -> torch.Tensor:
    d = _densepose_tensor(densepose)
    m = torch.zeros(d.shape, dtype=torch.bool, device=d.device)
    for part in parts:
        m |= d == part
    return m.unsqueeze(-3).float()


def dense_arm_mask(densepose: ArrayLike) -> torch.Tensor:
    """DensePose arm parts {15..22}: float32 (…, 1, H, W)."""
    return _parts_mask(densepose, DP_ARM_PARTS)


def hand_mask(parsing: ArrayLike, densepose: ArrayLike) -> torch.Tensor:
    """Hands: parsing arms {11, 13} ∩ DensePose hands {3, 4}; float32 (…, 1, H, W)."""
    return arm_mask(parsing) * _parts_mask(densepose, DP_HAND_PARTS).to(_device_of(parsing, densepose))


def _device_of(*xs: ArrayLike) -> torch.device:
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


# --- pose -------------------------------------------------------------------------------------------------------
def pose_maps(keypoints: ArrayLike, height: int, width: int, radius: int = 5) -> torch.Tensor:
    """Keypoint maps float32 (…, K, H, W) in {-1, 1}: one filled (2r+1)-square per keypoint with x > 1 and y > 1.

    ``keypoints`` is (…, K, 2) or (…, K, 3) pixel coordinates (x, y[, confidence]); K = 18 for COCO-18.
    Matches the original loader's ``ImageDraw.rectangle((x-r, y-r, x+r, y+r))`` pixel for pixel (corners truncated to
    integers, both ends inclusive, clipped to the image).
    """
    if isinstance(keypoints, torch.Tensor):
        kp = keypoints.to(torch.float64)
    else:
        kp = torch.from_numpy(np.asarray(keypoints, dtype=np.float64))
    if kp.dim() < 2 or kp.shape[-1] not in (2, 3):
        raise ValueError(f"keypoints must be (..., K, 2 or 3), got shape {tuple(kp.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}×{width}")
    x = kp[..., 0]
    y = kp[..., 1]
    present = (x > 1) & (y > 1)
    # PIL truncates float corners towards zero; trunc and floor differ only below 0, which is clipped anyway.
    x0 = torch.trunc(x - radius)[..., None, None]
    x1 = torch.trunc(x + radius)[..., None, None]
    y0 = torch.trunc(y - radius)[..., None, None]
    y1 = torch.trunc(y + radius)[..., None, None]
    cols = torch.arange(width, dtype=torch.float64, device=kp.device)
    rows = torch.arange(height, dtype=torch.float64, device=kp.device)[:, None]
    inside = (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1) & present[..., None, None]
    return inside.float() * 2.0 - 1.0


# --- tutor inputs ---------------------------------------------------------------------------------------------
def tutor_warp_input(
    parsing: ArrayLike, densepose: ArrayLike, keypoints: ArrayLike, radius: int = 5
) -> torch.Tensor:
    """The PB warp module's 45-channel person input, float32 (…, 45, H, W).

    Channels: 0 face_mask {1, 12}; 1 other_clothes_mask {5, 6, 8, 9, 10}; 2..26 one-hot DensePose (channel
    2 + k = part k); 27..44 the 18 pose maps in COCO-18 order.
    """
    p = merge_noise_label(parsing)
    d = _densepose_tensor(densepose)
    if p.shape != d.shape:
        raise ValueError(f"parsing {tuple(p.shape)} and densepose {tuple(d.shape)} must have the same shape")
    kp_shape = tuple(keypoints.shape) if hasattr(keypoints, "shape") else np.asarray(keypoints).shape
    if len(kp_shape) < 2 or kp_shape[-2] != NUM_KEYPOINTS:
        raise ValueError(f"tutor_warp_input needs COCO-18 keypoints (..., 18, 3), got shape {kp_shape}")
    h, w = p.shape[-2:]
    pose = pose_maps(keypoints, h, w, radius).to(p.device)
    if pose.shape[:-3] != p.shape[:-2]:
        raise ValueError(f"keypoints batch {tuple(pose.shape[:-3])} does not match parsing batch {tuple(p.shape[:-2])}")
    return torch.cat([face_mask(p), other_clothes_mask(p), densepose_one_hot(d).to(p.device), pose], dim=-3)


def image_to_tensor(image: ArrayLike) -> torch.Tensor:
    """An image as float32 (…, 3, H, W) in [-1, 1].

    numpy uint8 ``(…, H, W, 3)`` is scaled from [0, 255]; float tensors / arrays ``(…, 3, H, W)`` are taken as
    already in [-1, 1] (model space) and only converted to float32.
    """
    if isinstance(image, torch.Tensor):
        t = image
        if t.dtype == torch.uint8:
            raise TypeError("uint8 tensors are ambiguous here: pass a numpy H×W×3 uint8 array or a float tensor")
    else:
        arr = np.asarray(image)
        if arr.dtype == np.uint8:
            if arr.ndim < 3 or arr.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (..., H, W, 3), got shape {arr.shape}")
            t = torch.from_numpy(np.ascontiguousarray(arr)).movedim(-1, -3).float() / 127.5 - 1.0
            return t
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() < 3 or t.shape[-3] != 3:
        raise ValueError(f"float images must be (..., 3, H, W), got shape {tuple(t.shape)}")
    return t.float()


@dataclass(frozen=True)
class TutorGenPreserve:
    """What the PB generator needs besides the warped garment and its warped edge (all float32, (…, C, H, W)).

    preserve_region      (…, 3, H, W) image · preserve_mask, in [-1, 1] (0 outside the mask)
    dense_preserve_mask  (…, 1, H, W) DensePose arms {15..22} · (1 − target_cloth_mask)
    preserve_mask        (…, 1, H, W) face/hair + lower body + hands
    hand_mask            (…, 1, H, W) arms {11, 13} ∩ DensePose hands {3, 4}
    """

    preserve_region: torch.Tensor
    dense_preserve_mask: torch.Tensor
    preserve_mask: torch.Tensor
    hand_mask: torch.Tensor


def tutor_gen_preserve(
    image: ArrayLike,
    parsing: ArrayLike,
    densepose: ArrayLike,
    target_cloth_mask: ArrayLike | None = None,
) -> TutorGenPreserve:
    """The preserved person content for the PB generator (see the module docstring for the exact formulas).

    ``target_cloth_mask`` (…, 1, H, W) or (…, H, W) in [0, 1] is where the *new* garment will be; it defaults to
    the parsing's clothes {4} (the PB end-to-end stage). For tutor fakes with an unpaired garment pass the
    garment's warped edge (the published stages 3/4 do ``dense_preserve_mask * (1 - warped_prod_edge_un)``).
    """
    img = image_to_tensor(image)
    p = merge_noise_label(parsing).to(img.device)
    d = _densepose_tensor(densepose).to(img.device)
    if img.shape[-2:] != p.shape[-2:] or p.shape != d.shape:
        raise ValueError(
            f"image {tuple(img.shape)}, parsing {tuple(p.shape)} and densepose {tuple(d.shape)} sizes differ"
        )
    hands = hand_mask(p, d)
    preserve = face_mask(p) + other_clothes_mask(p) + hands  # disjoint label sets: stays in {0, 1}
    if target_cloth_mask is None:
        target = person_clothes_edge(p)
    else:
        target = target_cloth_mask if isinstance(target_cloth_mask, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(np.asarray(target_cloth_mask, dtype=np.float32))
        )
        target = target.float().to(img.device)
        if target.dim() == p.dim():
            target = target.unsqueeze(-3)
        if target.shape[-2:] != p.shape[-2:] or target.shape[-3] != 1:
            raise ValueError(f"target_cloth_mask must be (..., 1, H, W) or (..., H, W), got {tuple(target.shape)}")
    dense_preserve = dense_arm_mask(d) * (1.0 - target)
    return TutorGenPreserve(
        preserve_region=img * preserve,
        dense_preserve_mask=dense_preserve,
        preserve_mask=preserve,
        hand_mask=hands,
    )


def tutor_gen_input(
    preserve: TutorGenPreserve, warped_garment: torch.Tensor, warped_edge: torch.Tensor
) -> torch.Tensor:
    """The PB generator's 8-channel input, (…, 8, H, W):
    ``[preserve_region RGB(3), warped garment(3), warped edge(1), dense_preserve_mask(1)]``."""
    if warped_garment.shape[-3] != 3 or warped_edge.shape[-3] != 1:
        raise ValueError(
            f"warped_garment must be (..., 3, H, W) and warped_edge (..., 1, H, W), "
            f"got {tuple(warped_garment.shape)} and {tuple(warped_edge.shape)}"
        )
    return torch.cat(
        [preserve.preserve_region, warped_garment.float(), warped_edge.float(), preserve.dense_preserve_mask], dim=-3
    )


def person_clothes(image: ArrayLike, parsing: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp-loss targets: (image · clothes mask in [-1, 1] (…, 3, H, W), clothes mask {4} (…, 1, H, W))."""
    img = image_to_tensor(image)
    mask = person_clothes_edge(parsing).to(img.device)
    if img.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"image {tuple(img.shape)} and parsing {tuple(mask.shape)} sizes differ")
    return img * mask, mask
