"""A procedural miniature VITON with exact ground truth for every model × garment pair.

No try-on dataset can be downloaded where this project is developed, and real catalogs never have ground truth
for an unpaired try-on. ``SyntheticWorld`` renders, deterministically from a seed:

* **garments** — tees, tanks and long-sleeve tops in solid colours, stripes (any angle), dots, checks, with or
  without a logo patch, shown as a product photo on a plain light background (white, off-white or with a soft
  drop shadow; some garments are near-white on purpose) with their exact binary mask;
* **models** — front-view people with varied body shape, pose (shift, scale, tilt, arm angles, forearms across
  the body or hands on hips), skin tone, face and hair, background and lower garment (pants or skirt), each
  wearing an assigned garment in their own photo;
* **any model wearing any garment**: the garment is mapped onto the body through smooth non-rigid coordinates
  (its texture follows the torso, sleeves follow the arms, forearms in front occlude it), so the worn garment is an
  exact warp of the product photo (``PersonRender.garment_grid`` is that warp as a ``grid_sample`` grid). The
  render of model i in garment j is the ground truth of the unpaired try-on (i, j);
* the tutor's person representation, consistent with the image pixel for pixel: 14-class ACGPN parsing,
  COCO-18 keypoints (OpenPose JSON via ``encode_openpose`` / ``decode_openpose``), a 25-part DensePose index map,
  and a parsing corrupted like a real parser's output (``noisy_parsing``, controlled by ``parsing_noise``).

Everything is numpy (+ scipy.ndimage for the parsing noise and product shadows); no torch, no Ray. All randomness
of model i is derived from ``(seed, i)``, of garment j from ``(seed, j)`` and of the pair's drape from
``(seed, i, j)``, so any sample can be rendered on any worker in any order. See docs/synthetic-world.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pfafn.synthetic._body import BodySpec, PersonRenderer, Wobble, sample_body
from pfafn.synthetic._garment import GarmentSpec, Layout, render_product, sample_garment
from pfafn.synthetic._noise import corrupt_parsing
from pfafn.synthetic.openpose import decode_openpose, encode_openpose, encode_openpose_json

__all__ = [
    "WorldConfig",
    "SyntheticWorld",
    "GarmentRender",
    "PersonRender",
    "corrupt_parsing",
    "encode_openpose",
    "encode_openpose_json",
    "decode_openpose",
    "check_world_size",
    "GENERATOR_NAME",
]

GENERATOR_NAME = "pfafn.synthetic/1"  # bump when a change alters the pixels of an existing (seed, index)

# Stream tags mixed into every seed so that model, garment, pair and noise randomness never collide.
_MODEL, _GARMENT, _PAIR, _MODEL_NOISE, _GARMENT_NOISE, _PARSING_NOISE, _UNPAIRED = range(1, 8)
_SPEC_CACHE_SIZE = 4096


def check_world_size(height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive multiples of 32 (the networks' requirement)."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < 32 or value % 32:
            raise ValueError(f"{name} must be a positive multiple of 32, got {value}")


@dataclass(frozen=True)
class WorldConfig:
    """Size, seed and parser-noise level of a synthetic world.

    height, width   image size; positive multiples of 32 (256×192 is VITON's size). Everything scales with it.
    seed            non-negative integer; the same seed gives bit-identical worlds.
    parsing_noise   in [0, 1]: how badly ``SyntheticWorld.noisy_parsing`` imitates a real parser (0 = exact).
    """

    height: int = 256
    width: int = 192
    seed: int = 0
    parsing_noise: float = 0.0

    def __post_init__(self) -> None:
        check_world_size(self.height, self.width)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        noise = self.parsing_noise
        if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) or not (
            0.0 <= float(noise) <= 1.0
        ):
            raise ValueError(f"parsing_noise must be in [0, 1], got {self.parsing_noise!r}")


@dataclass(frozen=True)
class GarmentRender:
    """A product photo: ``image`` H×W×3 uint8 on a plain light background, ``mask`` H×W bool (exact garment)."""

    image: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class PersonRender:
    """A model wearing a garment, with the tutor's person representation.

    image         H×W×3 uint8 photo.
    parsing       H×W uint8, exact 14-class ACGPN ids (see ``pfafn.synthetic.labels``; never 2, 3, 5, 6 or 7).
    densepose     H×W uint8 DensePose part index 0..24 (0 = background).
    keypoints     18×3 float32 COCO-18 (x, y, confidence) in pixels; (0, 0, 0) = missing (outside the image).
    garment_mask  H×W bool, the visible worn garment: exactly ``parsing == 4``.
    garment_grid  H×W×2 float32: for each garment pixel, the (x, y) position in the garment's product photo it
                  shows, normalised to [-1, 1] with ``align_corners=True`` — the ground-truth warp, usable as
                  ``torch.nn.functional.grid_sample(product[None], grid[None], align_corners=True)``. Outside
                  ``garment_mask`` it is -2 (off-image).
    """

    image: np.ndarray
    parsing: np.ndarray
    densepose: np.ndarray
    keypoints: np.ndarray
    garment_mask: np.ndarray
    garment_grid: np.ndarray


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


class SyntheticWorld:
    """``n_models`` models and ``n_garments`` garments of one seeded world (see the module docstring).

    Rendering is lazy and stateless apart from small caches of the sampled parameters; a render depends only on
    (config, index[, index]), never on ``n_models`` / ``n_garments`` (except ``worn_garment``, which pairs model i
    with garment ``i % n_garments``) or on what was rendered before.
    """

    def __init__(self, n_models: int, n_garments: int, config: WorldConfig = WorldConfig()) -> None:
        for name, value in (("n_models", n_models), ("n_garments", n_garments)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(config, WorldConfig):
            raise TypeError(f"config must be a WorldConfig, got {type(config).__name__}")
        self.n_models = int(n_models)
        self.n_garments = int(n_garments)
        self.config = config
        self.layout = Layout.for_size(config.height, config.width)
        self._bodies: dict[int, BodySpec] = {}
        self._garments: dict[int, GarmentSpec] = {}

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SyntheticWorld(n_models={self.n_models}, n_garments={self.n_garments}, "
            f"config=WorldConfig(height={c.height}, width={c.width}, seed={c.seed}, parsing_noise={c.parsing_noise}))"
        )

    # -- ids and pairing ----------------------------------------------------------------------------------------
    def _check_model(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.n_models:
            raise IndexError(f"model index {i!r} out of range [0, {self.n_models})")
        return int(i)

    def _check_garment(self, j: int) -> int:
        if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < self.n_garments:
            raise IndexError(f"garment index {j!r} out of range [0, {self.n_garments})")
        return int(j)

    def model_id(self, i: int) -> str:
        """Stable id of model i: ``"m00000"``-style (at least 5 digits)."""
        return f"m{self._check_model(i):05d}"

    def garment_id(self, j: int) -> str:
        """Stable id of garment j: ``"g00000"``-style (at least 5 digits)."""
        return f"g{self._check_garment(j):05d}"

    def worn_garment(self, i: int) -> int:
        """The garment model i wears in its own photo: ``i % n_garments`` (distinct while n_models <= n_garments)."""
        return self._check_model(i) % self.n_garments

    def unpaired_garments(self, i: int, k: int) -> list[int]:
        """``k`` distinct garments other than model i's own, chosen deterministically from (seed, i).

        Fewer are returned when the world has fewer than k + 1 garments. Handy for picking unpaired test pairs
        and ground-truth renders; like ``worn_garment`` it depends on ``n_garments``.
        """
        i = self._check_model(i)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        own = self.worn_garment(i)
        others = self.n_garments - 1
        k = min(int(k), others)
        if k == 0:
            return []
        picks = _rng(self.config.seed, _UNPAIRED, i).choice(others, size=k, replace=False)
        return [int(p) + (1 if p >= own else 0) for p in picks]

    # -- parameters -----------------------------------------------------------------------------------------------
    def body_spec(self, i: int) -> BodySpec:
        """The sampled parameters of model i (cached)."""
        i = self._check_model(i)
        spec = self._bodies.get(i)
        if spec is None:
            if len(self._bodies) >= _SPEC_CACHE_SIZE:
                self._bodies.clear()
            spec = self._bodies[i] = sample_body(_rng(self.config.seed, _MODEL, i))
        return spec

    def garment_spec(self, j: int) -> GarmentSpec:
        """The sampled parameters of garment j (cached)."""
        j = self._check_garment(j)
        spec = self._garments.get(j)
        if spec is None:
            if len(self._garments) >= _SPEC_CACHE_SIZE:
                self._garments.clear()
            spec = self._garments[j] = sample_garment(_rng(self.config.seed, _GARMENT, j))
        return spec

    def model_info(self, i: int) -> dict[str, Any]:
        """A JSON-friendly summary of model i (for manifests, stratified metrics and debugging)."""
        b = self.body_spec(i)
        return {
            "model_id": self.model_id(i),
            "worn_garment_id": self.garment_id(self.worn_garment(i)),
            "hair_style": b.hair_style,
            "lower": b.lower,
            "arm_poses": [b.arms[0].pose, b.arms[1].pose],
            "arms_in_front": any(a.pose == "front" for a in b.arms),
            "scale": round(b.scale, 4),
            "tilt_deg": round(float(np.degrees(b.tilt)), 3),
        }

    def garment_info(self, j: int) -> dict[str, Any]:
        """A JSON-friendly summary of garment j."""
        g = self.garment_spec(j)
        return {
            "garment_id": self.garment_id(j),
            "kind": g.kind,
            "neck": g.neck,
            "pattern": g.pattern,
            "logo": g.logo is not None,
            "color_class": g.color_class,
            "background": g.background,
            "base_rgb": [round(float(c), 4) for c in g.base],
        }

    # -- renders --------------------------------------------------------------------------------------------------
    def render_garment(self, j: int) -> GarmentRender:
        """The product photo of garment j and its exact mask."""
        j = self._check_garment(j)
        image, mask = render_product(self.garment_spec(j), self.layout, _rng(self.config.seed, _GARMENT_NOISE, j))
        return GarmentRender(image=image, mask=mask)

    def render_person(self, i: int, j: int | None = None) -> PersonRender:
        """Model i wearing garment j (default: its own garment ``worn_garment(i)``), with exact labels.

        Everything but the garment layers (body, pose, face, hair, background, lower garment, sensor noise) is
        identical across j, so ``render_person(i, j)`` is the exact ground truth of trying garment j on model i.
        """
        i = self._check_model(i)
        j = self.worn_garment(i) if j is None else self._check_garment(j)
        seed = self.config.seed
        renderer = PersonRenderer(
            self.body_spec(i),
            self.garment_spec(j),
            self.layout,
            Wobble.sample(_rng(seed, _PAIR, i, j)),
            _rng(seed, _MODEL_NOISE, i),
        )
        return PersonRender(**renderer.render())

    def noisy_parsing(self, i: int, j: int | None = None, parsing: np.ndarray | None = None) -> np.ndarray:
        """The parsing of ``render_person(i, j)`` as a real parser would give it at ``config.parsing_noise``.

        Equal to the exact parsing when ``parsing_noise == 0``. The corruption is deterministic from
        (seed, i, j). Pass ``parsing`` (the exact map of that render) to skip re-rendering the person.
        """
        i = self._check_model(i)
        j = self.worn_garment(i) if j is None else self._check_garment(j)
        exact = self.render_person(i, j).parsing if parsing is None else np.asarray(parsing, np.uint8)
        if exact.shape != (self.config.height, self.config.width):
            raise ValueError(f"parsing must be {self.config.height}×{self.config.width}, got {exact.shape}")
        return corrupt_parsing(exact, float(self.config.parsing_noise), _rng(self.config.seed, _PARSING_NOISE, i, j))

