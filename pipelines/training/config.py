"""The config both training stages share: network widths, the VGG loss source, phases, Ray Train settings, and
:class:`TrainingConfig`, the fields and checks common to ``TutorConfig`` and ``DistillConfig``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeVar

from pipelines.core import storage
from pipelines.core.config import ConfigError, absolute_paths, check_choices, check_size, require

T = TypeVar("T")


@dataclass
class WidthsConfig:
    """``pfafn.nn.NetworkWidths`` as config (defaults = the published widths)."""

    encoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256, 256])
    fpn_dim: int = 256
    flow_channels: list[int] = field(default_factory=lambda: [128, 64, 32])
    ngf: int = 64

    def build(self):
        from pfafn.nn import NetworkWidths

        return NetworkWidths(encoder_channels=tuple(self.encoder_channels), fpn_dim=self.fpn_dim,
                             flow_channels=tuple(self.flow_channels), ngf=self.ngf)


TINY_WIDTHS = {"encoder_channels": [8, 16, 32, 32, 32], "fpn_dim": 16, "flow_channels": [16, 8, 8], "ngf": 8}
CPU_WIDTHS = {"encoder_channels": [16, 32, 64, 64, 64], "fpn_dim": 64, "flow_channels": [32, 16, 16], "ngf": 16}

VGG_OFF = ("", "off", "none", "false")
VGG_KEYWORDS = VGG_OFF + ("random", "torchvision")  # loss.vgg values that are not a weights path


@dataclass
class LossConfig:
    """``vgg``: ``off`` (no VGG terms), ``torchvision`` (ImageNet VGG19 from the torch hub cache, as published),
    ``random`` (random weights: exercises the cost and code path only; tests/benchmarks) or a path / s3:// URI of a
    VGG19 state dict. ``allow_download`` lets ``torchvision`` fetch the file on a machine with internet access.

    ``vgg`` stays a string, not a ``Literal``: besides the keywords it takes any weights path."""

    vgg: str | bool = "off"  # YAML reads a bare off/false as False: both mean "off"
    allow_download: bool = False

    def validate(self, where: str) -> None:
        if self.vgg is True:
            raise ConfigError(f"{where}: loss.vgg must be off, torchvision, random or a path/URI of VGG19 weights, "
                              f"got true")

    @property
    def off(self) -> bool:
        return self.vgg is False or str(self.vgg).lower() in VGG_OFF

    @property
    def weights_path(self) -> bool:
        """Whether ``vgg`` names a weights file (not a keyword)."""
        return isinstance(self.vgg, str) and self.vgg.lower() not in VGG_KEYWORDS


@dataclass
class PhaseConfig:
    """One training phase: ``niter`` epochs at ``lr`` then ``niter_decay`` epochs of linear decay
    (``--niter``/``--niter_decay``/``--lr`` of ``PF-AFN_train/options/train_options.py``)."""

    niter: int = 50
    niter_decay: int = 50
    lr: float = 5e-5
    max_steps: int = 0  # 0: all epochs; >0 caps the phase (smoke runs)

    @property
    def epochs(self) -> int:
        return self.niter + self.niter_decay


@dataclass
class TrainSettings:
    """Ray Train and loop settings shared by every phase of a stage (config key ``train``)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    checkpoint_every_steps: int = 0  # 0: only at epoch ends (and the last step)
    log_every_steps: int = 50  # rank 0 logs step / total, loss terms, samples/s, ETA every N steps (0: never)
    num_to_keep: int = 2
    async_upload: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    channels_last: bool = False
    sync_batchnorm: bool = False
    torch_threads: int = 0  # 0: leave torch's default
    prefetch_batches: int = 1
    decode_cpus: float = 1.0
    block_rows: int = 0  # rows per Ray Data block of the id table (0: 4 global batches, at most 512)
    # TEST-ONLY fault injection: kill worker ``fault_kill_rank`` of phase ``fault_phase`` right after global step
    # ``fault_kill_at_step`` (once per output: a marker under {output}/_fault/ stops the retry from killing again).
    fault_kill_at_step: int = 0
    fault_kill_rank: int = 1
    fault_phase: str = ""

    def validate(self, where: str) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"{where}: train.num_workers must be >= 1")
        if self.max_failures < -1:
            raise ConfigError(f"{where}: train.max_failures must be >= -1 (-1 = retry forever)")
        if self.log_every_steps < 0:
            raise ConfigError(f"{where}: train.log_every_steps must be >= 0 (0 = no progress lines)")


@dataclass
class TrainingConfig:
    """The fields both training stages share; every field is documented in docs/training.md and the stages' YAMLs.

    A stage subclasses it, names itself in :attr:`STAGE` and its required path fields in :attr:`PATHS`; its own
    ``validate()`` adds its checks after ``super().validate()``."""

    STAGE: ClassVar[str] = "training"
    PATHS: ClassVar[tuple[str, ...]] = ("data", "output")

    data: str = ""
    output: str = ""
    height: int = 256
    width: int = 192
    batch_size: int = 4
    seed: int = 0
    loss: LossConfig = field(default_factory=lambda: LossConfig(vgg="torchvision"))
    warp: PhaseConfig = field(default_factory=lambda: PhaseConfig(50, 50, 5e-5))
    e2e: PhaseConfig = field(default_factory=lambda: PhaseConfig(50, 50, 5e-5))
    warp_lr_scale: float = 0.2  # e2e warp optimizer lr relative to e2e.lr (0.2 in train_P[BF]AFN_e2e.py)
    val_samples: int = 64
    val_fraction: float = 0.1
    max_image_bytes: int = 50 * 2**20  # a larger input file is an error row, never read
    max_image_pixels: int = 40_000_000  # a larger decoded image is an error row (checked from the header)
    train: TrainSettings = field(default_factory=TrainSettings)
    lock_ttl_s: float = 600.0
    force_unlock: bool = False
    # Where the URIs in the manifests may point besides the dataset root (and, for distillation, the fakes'
    # folder): see input_roots(). A URI elsewhere is an error row "outside allowed roots", never read.
    allowed_roots: list[str] = field(default_factory=list)
    read_timeout_s: float = 120.0  # one input read (S3 GET or local file); past it the sample is an error row

    def validate(self) -> None:
        where = self.STAGE
        require(self, where, *self.PATHS)
        check_size(where, self.height, self.width)
        check_choices(self, where)
        if self.batch_size < 1:
            raise ConfigError(f"{where}: batch_size must be >= 1")
        from pipelines.core.locking import check_ttl

        check_ttl(where, self.lock_ttl_s)
        for name in ("warp", "e2e"):
            if getattr(self, name).epochs < 1:
                raise ConfigError(f"{where}: {name}.niter + {name}.niter_decay must be >= 1")
        if self.max_image_bytes < 1 or self.max_image_pixels < 1:
            raise ConfigError(f"{where}: max_image_bytes and max_image_pixels must be >= 1")
        from pipelines.batch import check_input_settings

        check_input_settings(where, self.allowed_roots, self.read_timeout_s)
        self.loss.validate(where)
        self.train.validate(where)

    def input_roots(self) -> tuple[str, ...]:
        """The folders/prefixes the decode tasks may read from (``pipelines.core.storage.read_input``):
        ``allowed_roots``, the dataset root and each stage's :meth:`own_input_roots`. A manifest row can then not
        turn a worker into a reader of any file it can open (issue 12, the same rule as the Ray Data stages)."""
        return tuple(self.allowed_roots) + (self.data,) + self.own_input_roots()

    def own_input_roots(self) -> tuple[str, ...]:
        """Roots of the stage's other inputs (distillation: the fakes' folder)."""
        return ()


def with_absolute_paths(config: T) -> T:
    """``config`` with its :attr:`~TrainingConfig.PATHS` and a ``loss.vgg`` weights path made absolute
    (``pipelines.core.config.absolute_paths``: Ray Train workers run in a working directory of their own)."""
    config = absolute_paths(config, *config.PATHS)
    loss = config.loss
    if loss.weights_path:
        config = dataclasses.replace(config, loss=dataclasses.replace(loss, vgg=storage.absolute_uri(loss.vgg)))
    return config
