"""Small PF-AFN models for the model-library tests: the published architecture at widths that run in milliseconds."""
from __future__ import annotations

import pytest
import torch

from pfafn.nn import NetworkWidths
from pfafn.tryon import TryOnModel

#: Reduced widths for unit tests of the networks (every level still has its own channel count where it matters).
SMALL = NetworkWidths(encoder_channels=(8, 16, 16, 16, 16), fpn_dim=16, flow_channels=(16, 8, 8), ngf=8)


def randomize_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm running statistics, so an eval-mode BN is not an identity (uses the global RNG)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return module


def small_tryon_model(seed: int = 0) -> TryOnModel:
    """A seeded :data:`SMALL` student in eval mode with randomized BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomize_bn(TryOnModel(SMALL)).eval()


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread avoids oversubscription on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
