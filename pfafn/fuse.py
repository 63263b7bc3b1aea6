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

from pfafn.nn.afwm import AFlowNet
from pfafn.nn.flow import memory_format_of

__all__ = ["cast_conv_weights", "fold_batchnorm"]


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
            fused.weight.data = fused.weight.data.contiguous(memory_format=memory_format_of(conv.weight))
            seq._modules[first] = fused
            seq._modules[second] = nn.Identity()
            folded += 1
    return folded



def cast_conv_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every ``Conv2d``'s weight and bias in ``dtype`` (bf16 / fp16), in place; returns how many convs.

    Under autocast each convolution casts its fp32 weight (and bias) to the autocast dtype on every call: 430 of
    the 768 ``aten::copy_`` calls of a tiled bf16 forward (4×4 tile, 256×192), ~150 ms of its ~6 s on two CPU
    cores (docs/model-speed.md). Casting once at load removes those copies; the arithmetic is the
    same, since autocast computes with exactly these rounded weights. Left in fp32: BatchNorms (their statistics
    are not rounded) and the flow networks' offset convs (``AFlowNet.offset_convs``), which run in fp32 by design.
    Inference only: a model cast this way is never trained or saved.
    """
    keep = {id(conv) for m in model.modules() if isinstance(m, AFlowNet) for conv in m.offset_convs()}
    cast = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and id(module) not in keep:
            module.weight.data = module.weight.data.to(dtype)  # .to keeps the memory format (channels_last too)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
            cast += 1
    return cast
