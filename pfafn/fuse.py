"""Inference-only BatchNorm folding: every ``Conv2d → BatchNorm2d`` pair of an eval-mode model becomes one conv.

In eval mode a BatchNorm is a per-channel affine map ``y = (x - mean) / sqrt(var + eps) * gamma + beta``; right
after a convolution it can be folded into the convolution's weight and bias (Ioffe & Szegedy 2015, and
``torch.nn.utils.fusion.fuse_conv_bn_eval``, which this uses), saving one full read and write of the activation per
pair. PF-AFN has such pairs in the generator (every ``ResidualBlock``: conv → BN twice; each U-Net level's down and
up conv → BN) and in AFWM's pre-activation ``ResBlock`` (the middle conv → BN). The other BNs of AFWM follow a
sum or precede a ReLU → conv (pre-activation), so they cannot be folded and stay.

Only direct neighbours inside one ``nn.Sequential`` are folded: there the conv's output feeds nothing but the BN
(Sequential semantics), so folding cannot change any other consumer. The folded BN is replaced by ``nn.Identity``,
which changes the module's ``state_dict`` keys (the BN entries disappear, folded convs gain a ``bias``): fold only a
model that is used for inference and never saved (``pfafn.inference.InferenceMode.prepare`` does it to the model
it prepares for inference; checkpoints are written from the training modules, which are never prepared).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ``Conv2d → BatchNorm2d`` pair inside ``model``'s Sequentials, in place; returns how many.

    ``model`` must be in eval mode (running statistics are what get folded). Idempotent: a second call finds no
    pairs. Weights keep their device, dtype and memory format (fold before converting to channels_last is fine too).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (BatchNorm must use its running statistics)")
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if conv is None or bn is None or not _foldable(conv, bn):
                continue
            fused = fuse_conv_bn_eval(conv, bn)
            fused.weight.data = fused.weight.data.contiguous(memory_format=_memory_format(conv.weight))
            seq._modules[first] = fused
            seq._modules[second] = nn.Identity()
            folded += 1
    return folded


def _memory_format(weight: torch.Tensor) -> torch.memory_format:
    if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
