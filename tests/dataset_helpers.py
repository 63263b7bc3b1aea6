"""Small dataset roots for tests, written by the real writer (``pipelines.stages.generate_synthetic``) in-process."""
from __future__ import annotations

from pipelines.stages.generate_synthetic import SyntheticDatasetConfig, run


def write_dataset_root(uri: str, *, persons: int, garments: int, test: int = 2, height: int = 64, width: int = 64,
                       seed: int = 0, parsing_noise: float = 0.0) -> str:
    """Write a synthetic dataset root at ``uri`` (``test`` test-split persons, one ground-truth pair each)."""
    run(SyntheticDatasetConfig(output=uri, persons=persons, garments=garments, height=height, width=width, seed=seed,
                               parsing_noise=parsing_noise, ground_truth_pairs=test, test_fraction=test / persons,
                               executor="local"))
    return uri
