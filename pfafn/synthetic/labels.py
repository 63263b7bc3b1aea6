"""Label schemes shared by the synthetic world and the person representation (numpy-free, torch-free).

**Human parsing** — the 14-class ACGPN scheme that PF-AFN's training data uses (ids 2 and 3 are unused):

====  ===============  =======================================================================
id    name             notes
====  ===============  =======================================================================
0     background
1     hair
4     upper clothes    the garment being tried on; the target region of the warp losses
5     left shoe        never produced by the synthetic world (feet are out of frame)
6     right shoe       never produced by the synthetic world
7     noise            a real parser's junk label; PF-AFN merges it into 4
8     pants            lower garment (pants or skirt)
9     left leg         skin of the person's left leg (image right in a front view)
10    right leg        skin of the person's right leg (image left)
11    left arm         skin of the person's left arm (image right); hands are part of the arm
12    face             face, ears, neck and exposed skin at the neckline
13    right arm        skin of the person's right arm (image left)
====  ===============  =======================================================================

**DensePose** — the 24 IUV body parts (0 = background):

1, 2 torso (back, front) · 3 right hand · 4 left hand · 5 left foot · 6 right foot ·
7, 9 upper leg right · 8, 10 upper leg left · 11, 13 lower leg right · 12, 14 lower leg left ·
15, 17 upper arm left · 16, 18 upper arm right · 19, 21 lower arm left · 20, 22 lower arm right ·
23, 24 head (right, left).

**Pose** — OpenPose COCO-18 keypoint order.
"""

from __future__ import annotations

# --- 14-class ACGPN parsing -------------------------------------------------------------------------------------
BACKGROUND = 0
HAIR = 1
UPPER_CLOTHES = 4
LEFT_SHOE = 5
RIGHT_SHOE = 6
NOISE = 7
PANTS = 8
LEFT_LEG = 9
RIGHT_LEG = 10
LEFT_ARM = 11
FACE = 12
RIGHT_ARM = 13

PARSING_LABELS: dict[int, str] = {
    BACKGROUND: "background",
    HAIR: "hair",
    UPPER_CLOTHES: "upper_clothes",
    LEFT_SHOE: "left_shoe",
    RIGHT_SHOE: "right_shoe",
    NOISE: "noise",
    PANTS: "pants",
    LEFT_LEG: "left_leg",
    RIGHT_LEG: "right_leg",
    LEFT_ARM: "left_arm",
    FACE: "face",
    RIGHT_ARM: "right_arm",
}
NUM_PARSING_CLASSES = 14  # ids 0..13 (2 and 3 unused), the ``--label_nc 14`` of the original training options

FACE_LABELS = (HAIR, FACE)
OTHER_CLOTHES_LABELS = (LEFT_SHOE, RIGHT_SHOE, PANTS, LEFT_LEG, RIGHT_LEG)
CLOTHES_LABELS = (UPPER_CLOTHES, NOISE)  # 7 is merged into 4 before anything uses the parsing
ARM_LABELS = (LEFT_ARM, RIGHT_ARM)

# --- DensePose ----------------------------------------------------------------------------------------------------
NUM_DENSEPOSE_CHANNELS = 25  # background + 24 parts
DP_TORSO_BACK = 1
DP_TORSO_FRONT = 2
DP_RIGHT_HAND = 3
DP_LEFT_HAND = 4
DP_LEFT_FOOT = 5
DP_RIGHT_FOOT = 6
DP_UPPER_LEG_RIGHT = (7, 9)
DP_UPPER_LEG_LEFT = (8, 10)
DP_LOWER_LEG_RIGHT = (11, 13)
DP_LOWER_LEG_LEFT = (12, 14)
DP_UPPER_ARM_LEFT = (15, 17)
DP_UPPER_ARM_RIGHT = (16, 18)
DP_LOWER_ARM_LEFT = (19, 21)
DP_LOWER_ARM_RIGHT = (20, 22)
DP_HEAD = (23, 24)  # right, left

DP_TORSO_PARTS = (DP_TORSO_BACK, DP_TORSO_FRONT)
DP_HAND_PARTS = (DP_RIGHT_HAND, DP_LEFT_HAND)
DP_ARM_PARTS = tuple(range(15, 23))  # 15..22: upper and lower arms, both sides (the original code's dense_preserve_mask)

# --- OpenPose COCO-18 -------------------------------------------------------------------------------------------
COCO18_KEYPOINTS = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
NUM_KEYPOINTS = len(COCO18_KEYPOINTS)
KP = {name: index for index, name in enumerate(COCO18_KEYPOINTS)}

# BODY_25 index of each COCO-18 keypoint (BODY_25 inserts MidHip at 8 and appends 6 foot points).
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
