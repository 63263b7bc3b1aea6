"""The PF-AFN try-on generator: a residual U-Net (``ResUnetGenerator`` of ``PF-AFN_test/models/networks.py``).

Module attribute names and Sequential indices reproduce the published ``gen_model_final.pth`` keys (``PF-AFN_test/models/networks.py``):
261 tensors and 43,899,968 parameters for ``ResUnetGenerator(7, 4)`` (student), 43,900,544 for the 8-channel tutor.
Convolutions have no bias (the published code enables bias only with InstanceNorm); the norm layer is BatchNorm2d.

Block layout (index = position in the block's ``model`` Sequential, part of the key):

* outermost ``model.model``: 0 conv s2 · 1 ReLU · 2, 3 ResidualBlock · 4 submodule · 5 Upsample · 6 conv
* middle (L1..L3, and any extra ``num_downs - 5`` blocks): 0 conv s2 · 1 BN · 2 ReLU · 3, 4 Res · 5 submodule ·
  6 Upsample · 7 conv · 8 BN · 9 ReLU · 10, 11 Res
* innermost: 0 conv s2 · 1 ReLU · 2, 3 Res · 4 Upsample · 5 conv · 6 BN · 7 ReLU · 8, 9 Res

Every non-outermost block returns ``cat([input, block(input)], dim=1)``, input first.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ResidualBlock", "ResUnetSkipConnectionBlock", "ResUnetGenerator"]


class ResidualBlock(nn.Module):
    """``ReLU(x + (Conv3×3 → BN → ReLU → Conv3×3 → BN)(x))``; keys ``block.{0,3}`` (conv), ``block.{1,4}`` (BN)."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        out += x
        return self.relu(out)


class ResUnetSkipConnectionBlock(nn.Module):
    """One U-Net level: stride-2 conv down, 2 residual blocks, ``submodule``, nearest ×2 up, conv, 2 residual blocks.

    Args:
        outer_nc: channels this block outputs (before the skip concatenation).
        inner_nc: channels inside (after the down conv).
        input_nc: input channels (defaults to ``outer_nc``).
        submodule: the next-inner block (None for the innermost).
        outermost / innermost: the two special layouts (see the module docstring).

    Input B×input_nc×H×W; output B×outer_nc×H×W (outermost) or B×(input_nc + outer_nc)×H×W (with the skip).
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=3, stride=2, padding=1, bias=False)
        res_down = [ResidualBlock(inner_nc), ResidualBlock(inner_nc)]
        upsample = nn.Upsample(scale_factor=2, mode="nearest")
        if outermost:
            upconv = nn.Conv2d(inner_nc * 2, outer_nc, kernel_size=3, stride=1, padding=1, bias=False)
            layers = [downconv, nn.ReLU(True), *res_down, submodule, upsample, upconv]
        elif innermost:
            upconv = nn.Conv2d(inner_nc, outer_nc, kernel_size=3, stride=1, padding=1, bias=False)
            res_up = [ResidualBlock(outer_nc), ResidualBlock(outer_nc)]
            layers = [downconv, nn.ReLU(True), *res_down, upsample, upconv, nn.BatchNorm2d(outer_nc), nn.ReLU(True),
                      *res_up]
        else:
            upconv = nn.Conv2d(inner_nc * 2, outer_nc, kernel_size=3, stride=1, padding=1, bias=False)
            res_up = [ResidualBlock(outer_nc), ResidualBlock(outer_nc)]
            layers = [downconv, nn.BatchNorm2d(inner_nc), nn.ReLU(True), *res_down, submodule, upsample, upconv,
                      nn.BatchNorm2d(outer_nc), nn.ReLU(True), *res_up]
        if any(layer is None for layer in layers):
            raise ValueError("a non-innermost ResUnetSkipConnectionBlock needs a submodule")
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class ResUnetGenerator(nn.Module):
    """Residual U-Net generator.

    Args:
        input_nc: 7 for the student (person RGB, warped garment RGB, warped mask), 8 for the tutor.
        output_nc: 4 (3 rendered-person channels before tanh + 1 composition-mask logit).
        num_downs: number of stride-2 levels (5 published; more adds ``8·ngf`` levels).
        ngf: base width (64 published).

    Input B×input_nc×H×W with H, W multiples of 2**num_downs; output B×output_nc×H×W raw (no activation).
    Keys ``model.model.…`` as published.
    """

    def __init__(self, input_nc: int, output_nc: int = 4, num_downs: int = 5, ngf: int = 64) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5 (the published layout), got {num_downs}")
        self.input_nc = input_nc
        self.output_nc = output_nc
        self.num_downs = num_downs
        block = ResUnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = ResUnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block)
        block = ResUnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
        block = ResUnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
        block = ResUnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
        self.model = ResUnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.input_nc:
            raise ValueError(f"generator input must be B×{self.input_nc}×H×W, got {tuple(x.shape)}")
        multiple = 2**self.num_downs
        height, width = x.shape[-2:]
        if height % multiple or width % multiple:
            raise ValueError(
                f"ResUnetGenerator(num_downs={self.num_downs}) needs H and W divisible by {multiple}; "
                f"got {height}×{width}"
            )
        return self.model(x)
