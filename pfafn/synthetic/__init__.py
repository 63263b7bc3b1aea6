"""Data for PF-AFN: the procedural synthetic try-on world and the shared label schemes.

``pfafn.synthetic`` is numpy-only (no torch, no Ray) so data-generation workers stay light::

    from pfafn.synthetic import SyntheticWorld, WorldConfig
    world = SyntheticWorld(n_models=100, n_garments=100, config=WorldConfig(seed=0))
    person = world.render_person(7)          # model 7 in its own garment, with parsing / DensePose / pose
    truth = world.render_person(7, 3)        # model 7 wearing garment 3: exact unpaired ground truth
    garment = world.render_garment(3)        # product photo + exact mask
"""

from pfafn.synthetic import labels
from pfafn.synthetic.world import (
    GENERATOR_NAME,
    GarmentRender,
    PersonRender,
    SyntheticWorld,
    WorldConfig,
    check_world_size,
    corrupt_parsing,
    decode_openpose,
    encode_openpose,
    encode_openpose_json,
)

__all__ = [
    "GENERATOR_NAME",
    "GarmentRender",
    "PersonRender",
    "SyntheticWorld",
    "WorldConfig",
    "check_world_size",
    "corrupt_parsing",
    "decode_openpose",
    "encode_openpose",
    "encode_openpose_json",
    "labels",
]
