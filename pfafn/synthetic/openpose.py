"""OpenPose JSON encode/decode for COCO-18 keypoints (pure helpers, no numpy-heavy work).

VITON stores poses as ``{"version": 1.0, "people": [{"pose_keypoints": [x, y, c, ...], ...}]}`` (the legacy
key); current OpenPose writes ``pose_keypoints_2d``. ``encode_openpose`` writes both keys by default and
``decode_openpose`` reads either, including BODY_25 output (converted to COCO-18).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pfafn.synthetic.labels import BODY25_TO_COCO18, NUM_KEYPOINTS

LEGACY_KEY = "pose_keypoints"
CURRENT_KEY = "pose_keypoints_2d"


def encode_openpose(keypoints: np.ndarray, keys: Sequence[str] = (LEGACY_KEY, CURRENT_KEY)) -> dict[str, Any]:
    """OpenPose JSON object (a dict; ``json.dumps`` it to write) for one person's 18×3 keypoints."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be {NUM_KEYPOINTS}×3 (x, y, confidence), got {kp.shape}")
    if not keys:
        raise ValueError("keys must name at least one of 'pose_keypoints', 'pose_keypoints_2d'")
    flat = [round(float(v), 3) for v in kp.reshape(-1)]
    person: dict[str, Any] = {key: list(flat) for key in keys}
    person.update({"face_keypoints": [], "hand_left_keypoints": [], "hand_right_keypoints": []})
    return {"version": 1.0, "people": [person]}


def encode_openpose_json(keypoints: np.ndarray, keys: Sequence[str] = (LEGACY_KEY, CURRENT_KEY)) -> str:
    """``encode_openpose`` serialised to a compact JSON string."""
    return json.dumps(encode_openpose(keypoints, keys), separators=(",", ":"))


def decode_openpose(data: str | bytes | Mapping[str, Any], person: int = 0) -> np.ndarray:
    """18×3 float32 keypoints (x, y, confidence) of one person from OpenPose JSON (text, bytes or parsed dict).

    Accepts the legacy ``pose_keypoints`` and the current ``pose_keypoints_2d`` keys, COCO-18 (54 values) or
    BODY_25 (75 values, mapped to COCO-18). A file with no people gives all zeros (every keypoint missing), as
    the original loader does. Raises ValueError for anything else.
    """
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid OpenPose JSON: {err}") from err
    if not isinstance(data, Mapping) or "people" not in data:
        raise ValueError("OpenPose JSON must be an object with a 'people' list")
    people = data["people"]
    if not isinstance(people, list):
        raise ValueError("OpenPose 'people' must be a list")
    if len(people) <= person:
        return np.zeros((NUM_KEYPOINTS, 3), np.float32)
    entry = people[person]
    values = None
    for key in (LEGACY_KEY, CURRENT_KEY):
        if isinstance(entry, Mapping) and key in entry:
            values = entry[key]
            break
    if values is None:
        raise ValueError("OpenPose person has neither 'pose_keypoints' nor 'pose_keypoints_2d'")
    try:
        arr = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"OpenPose keypoints are not numbers: {err}") from err
    if arr.size == NUM_KEYPOINTS * 3:
        out = arr.reshape(NUM_KEYPOINTS, 3)
    elif arr.size == 25 * 3:
        out = arr.reshape(25, 3)[list(BODY25_TO_COCO18)]
    else:
        raise ValueError(f"expected 54 (COCO-18) or 75 (BODY_25) keypoint values, got {arr.size}")
    if not np.isfinite(out).all():
        raise ValueError("OpenPose keypoints contain NaN or infinity")
    return np.ascontiguousarray(out, dtype=np.float32)
