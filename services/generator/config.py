"""Configuration of a class-conditional inpainting diffusion generator trained from scratch.

One frozen dataclass holds everything that shapes the model and its training run; it is
dumped as JSON next to every checkpoint (timm habit) so a checkpoint can be rebuilt and
audited without the code that wrote it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from shared.sampling_params import prediction_type_for

MIN_RESOLUTION = 32
#: Largest UNet a training request may ask for: 20 bytes a parameter to train (weights,
#: gradients, two Adam moments, EMA) make 1e9 about 20 GB before activations; Stable
#: Diffusion's UNet has 0.86e9. Checked before any job from the architecture alone.
MAX_UNET_PARAMETERS = 1_000_000_000
MAX_RESOLUTION = 256

SynthesisMode = Literal["inpaint", "img2img", "generate"]
SYNTHESIS_MODES: tuple[SynthesisMode, ...] = ("inpaint", "img2img", "generate")
# Modes that sample with an all-ones mask (no known pixel).
WHOLE_IMAGE_MODES = frozenset({"img2img", "generate"})

Augmentation = Literal["dermoscopy", "none"]
AUGMENTATIONS: tuple[Augmentation, ...] = ("dermoscopy", "none")
PredictionType = Literal["epsilon", "v_prediction"]
PREDICTION_TYPES: tuple[PredictionType, ...] = ("epsilon", "v_prediction")
#: The beta schedule whose last timestep already has (near) zero signal: alpha_bar
#: ~2e-9 at T = 1000, so sampling can start there (Lin et al. 2023 rescale other
#: schedules to get the same; see schedulers.py).
ZERO_SNR_SCHEDULE = "squaredcos_cap_v2"


def full_mask_share(modes: tuple[str, ...]) -> float:
    """Share of training examples with an all-ones mask for a generator serving ``modes``.

    - inpaint only: 0.1. Inpainting never samples with a full mask, but the full-mask
      examples are the only ones where the network must invent content with no known
      pixel at all (the unmasked region is given unnoised, so there it learns to copy);
      that keeps it a usable whole-image denoiser for large masks. 0.1 is also the share
      every generator before ``modes`` was trained with, so an inpaint generator trains
      exactly as it did.
    - inpaint and img2img/generate: 0.5, each sampling path gets half of the examples.
    - img2img/generate only: 1.0, every example trains the one path served.
    """
    whole = any(mode in WHOLE_IMAGE_MODES for mode in modes)
    if not whole:
        return 0.1
    return 0.5 if "inpaint" in modes else 1.0


def default_prediction_type(modes: tuple[str, ...]) -> PredictionType:
    """What a generator serving ``modes`` learns to predict.

    - with ``generate``: v. Generating starts from pure noise, where an x0 estimate from a
      predicted noise divides the network's error by sqrt(alpha_bar) (1/16 at the first
      "leading" timestep, t = 960 of 1000); v-prediction estimates x0 with no division
      and starts at the last timestep, pure noise as training saw it (Salimans & Ho
      2022; Lin et al. 2023). On the demo set (benchmarks/generator_demo_quality.py,
      ~2,000 steps, README) generate mode went from green, blue and purple images the
      real-data probe recognised 20 % of the time (Frechet distance ~5,000) to skin-
      coloured ones it recognised 72 % (~300, inpainting's own level).
    - otherwise epsilon: inpainting and img2img start from known pixels, which fix the
      colours, and every generator before this choice was trained so.
    """
    return cast(PredictionType, prediction_type_for(modes))


def resolve_augment(augment: str, *, modality: str, channels: int) -> Augmentation:
    """The training augmentation of ``augment`` (``"auto"``, ``"dermoscopy"`` or ``"none"``).

    ``"auto"`` gives dihedral augmentation (flips and 90 degree rotations) to colour
    dermoscopy, where a lesion seen from above has no up, down, left or right, and none
    to everything else: a chest X-ray has a laterality (heart on the patient's left) that
    a flip would break, a fundus image a left or right eye, and a grayscale dataset is a
    radiograph more often than not.
    """
    if augment == "auto":
        return "dermoscopy" if modality == "dermoscopy" and channels == 3 else "none"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be 'auto', 'dermoscopy' or 'none', got {augment!r}")
    return augment  # type: ignore[return-value]


@dataclass(frozen=True)
class GeneratorConfig:
    """Model and training settings.

    Attributes:
        resolution: side of the square training/sampling images in pixels, 32-256 (16 is
            accepted only for tests, see ``allow_tiny``); must be divisible by the total
            downsampling factor of the UNet (and of the VAE in latent mode).
        channels: image channels, 1 (grayscale, chest X-ray) or 3 (RGB, dermoscopy).
        num_classes: number of real classes; the class embedding has one extra row, the
            "null" class ``num_classes`` used for classifier-free guidance.
        block_out_channels: UNet width per resolution level; its length sets the number
            of down/up blocks (each but the last halves the resolution).
        layers_per_block: ResNet layers per UNet block.
        attention_levels: indices of levels that use attention blocks (costly at high
            resolution; the lowest-resolution level by default).
        latent: train in the latent space of an ``AutoencoderKL`` (larger images, GPU).
        vae_block_out_channels: VAE width per level (latent mode only); the VAE
            downsamples by ``2 ** (len(vae_block_out_channels) - 1)``.
        latent_channels: channels of the VAE latent.
        vae_path: directory of a pretrained ``AutoencoderKL`` (``save_pretrained``
            layout); ``None`` builds an untrained one from the config, which is only
            useful for tests - a latent generator needs a trained autoencoder.
        num_train_timesteps: length of the DDPM forward process.
        beta_schedule: diffusers beta schedule name.
        class_dropout: probability, 0-1, that a training label is replaced by the null
            class so the same network learns p(x) and p(x|y) (classifier-free guidance).
        modes: the synthesis modes the generator is trained to serve, a non-empty
            subset of :data:`SYNTHESIS_MODES`; the service refuses the others.
        full_mask_probability: probability, 0-1, that a training example gets an
            all-ones mask (nothing known), the mask "generate" and "img2img" sample
            with; ``None`` follows ``modes`` (:func:`full_mask_share`) and is replaced
            by that value, so the dumped config says what training used.
        prediction_type: what the UNet predicts, ``"epsilon"`` (the noise) or
            ``"v_prediction"`` (v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0, Salimans
            & Ho 2022); ``None`` follows ``modes`` (:func:`default_prediction_type`) and
            is replaced by that value. v-prediction generators sample with "trailing"
            timesteps, from the last training timestep (see ``schedulers.py``).
        augment: ``"dermoscopy"`` (random flips and 90 degree rotations of each
            training example) or ``"none"`` (for modalities with a laterality, such as
            chest X-rays); see :func:`resolve_augment`. Pixel space only: a VAE latent
            of a flipped image is not the flipped latent.
        class_balance: exponent b in [0, 1] of class-balanced batch sampling: an image
            of a class with n images is drawn with weight n ** -b, so classes are seen in
            proportion to n ** (1 - b) (0 = as in the data, 1 = every class equally
            often). The tail classes are the ones the generator exists for, so the
            default sits between (square-root balancing).
        mask_loss_weight: weight (>= 1) of the masked (painted) region in the per-pixel
            noise-prediction loss; unmasked pixels have weight 1. See ``training.py``.
        learning_rate, adam_weight_decay, lr_scheduler, lr_warmup_steps: optimiser.
        batch_size, max_train_steps: training length in optimiser steps.
        ema_decay: decay of the exponential moving average of the weights (diffusers
            ``EMAModel``); the EMA weights are the ones sampled from.
        checkpoint_every: write a checkpoint every this many steps (and at the end,
            and when canceled).
        keep_checkpoints: how many of the newest checkpoints to keep on disk (the last
            one, the run's final checkpoint, always among them). The service sets it from
            ``Settings.generator_keep_checkpoints`` and keeps as many in storage.
        mixed_precision: ``"bf16"`` autocast on CUDA, ``"no"`` for fp32; ignored on CPU.
        seed: seed of every random draw of the run (init, batches, noise, dropout).
    """

    resolution: int = 32
    channels: int = 3
    num_classes: int = 2
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (2,)
    latent: bool = False
    vae_block_out_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    vae_path: str | None = None
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    class_dropout: float = 0.1
    modes: tuple[SynthesisMode, ...] = ("inpaint",)
    full_mask_probability: float | None = None
    prediction_type: PredictionType | None = None
    augment: Augmentation = "dermoscopy"
    class_balance: float = 0.5
    mask_loss_weight: float = 4.0
    learning_rate: float = 2e-4
    adam_weight_decay: float = 1e-2
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 50
    batch_size: int = 32
    max_train_steps: int = 1000
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    mixed_precision: Literal["no", "bf16"] = "bf16"
    seed: int = 0
    allow_tiny: bool = False
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Tuples survive a JSON round trip as lists; normalise so equality holds.
        for name in (
            "block_out_channels",
            "attention_levels",
            "vae_block_out_channels",
            "class_names",
            "modes",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.full_mask_probability is None:
            object.__setattr__(self, "full_mask_probability", full_mask_share(self.modes))
        if self.prediction_type is None:
            object.__setattr__(self, "prediction_type", default_prediction_type(self.modes))
        self.validate()

    @property
    def null_class_id(self) -> int:
        """Row of the class embedding that means "no class" (classifier-free guidance)."""
        return self.num_classes

    @property
    def vae_scale_factor(self) -> int:
        """Pixel-to-latent downsampling of the VAE; 1 in pixel space."""
        return 2 ** (len(self.vae_block_out_channels) - 1) if self.latent else 1

    @property
    def unet_downsampling(self) -> int:
        """Total downsampling of the UNet (every block but the last halves H and W)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def model_channels(self) -> int:
        """Channels of the diffused tensor: image channels, or latent channels."""
        return self.latent_channels if self.latent else self.channels

    @property
    def unet_parameters(self) -> int:
        """Parameters of the UNet ``model.build_unet`` makes for this config, counted from
        the architecture without building it (diffusers ``UNet2DModel``: ResNet blocks
        with a time-embedding projection, attention with q, k, v and out projections;
        tests/generator/test_config.py checks the count against the built model)."""
        widths, layers, attention = self.block_out_channels, self.layers_per_block, set(
            self.attention_levels)
        temb = 4 * widths[0]

        def resnet(c_in: int, c_out: int) -> int:
            shortcut = c_in * c_out + c_out if c_in != c_out else 0
            return (2 * c_in + 9 * c_in * c_out + c_out + temb * c_out + c_out + 2 * c_out
                    + 9 * c_out * c_out + c_out + shortcut)

        def attn(c: int) -> int:
            return 4 * c * c + 6 * c

        c_in = 2 * self.model_channels + 1
        total = 9 * c_in * widths[0] + widths[0]  # conv_in
        total += widths[0] * temb + temb + temb * temb + temb  # time embedding
        total += (self.num_classes + 1) * temb  # class embedding, null class included
        last = len(widths) - 1
        previous = widths[0]
        for i, width in enumerate(widths):  # down blocks
            for k in range(layers):
                total += resnet(previous if k == 0 else width, width)
                total += attn(width) if i in attention else 0
            total += 9 * width * width + width if i < last else 0  # downsample
            previous = width
        total += 2 * resnet(widths[-1], widths[-1]) + attn(widths[-1])  # mid block
        reversed_widths = list(reversed(widths))
        out = reversed_widths[0]
        for j, width in enumerate(reversed_widths):  # up blocks
            prev_out, out = out, width
            skip_in = reversed_widths[min(j + 1, last)]
            for k in range(layers + 1):
                skip = skip_in if k == layers else out
                total += resnet((prev_out if k == 0 else out) + skip, out)
                total += attn(out) if (last - j) in attention else 0
            total += 9 * out * out + out if j < last else 0  # upsample
        total += 2 * widths[0] + 9 * widths[0] * self.model_channels + self.model_channels
        return total

    @property
    def sample_size(self) -> int:
        """Spatial side of the diffused tensor (pixels, or latent cells)."""
        return self.resolution // self.vae_scale_factor

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        low = 16 if self.allow_tiny else MIN_RESOLUTION
        if not low <= self.resolution <= MAX_RESOLUTION:
            raise ValueError(
                f"resolution must be in [{low}, {MAX_RESOLUTION}], got {self.resolution}"
            )
        factor = self.unet_downsampling * self.vae_scale_factor
        if self.resolution % factor:
            raise ValueError(
                f"resolution {self.resolution} is not divisible by the downsampling factor "
                f"{factor} (UNet {self.unet_downsampling} x VAE {self.vae_scale_factor}); "
                f"use a multiple of {factor} or fewer blocks"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for num_classes={self.num_classes}"
            )
        if not self.block_out_channels or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(f"block_out_channels must be positive, got {self.block_out_channels}")
        if any(not 0 <= i < len(self.block_out_channels) for i in self.attention_levels):
            raise ValueError(
                f"attention_levels {self.attention_levels} out of range for "
                f"{len(self.block_out_channels)} levels"
            )
        if self.unet_parameters > MAX_UNET_PARAMETERS:
            raise ValueError(
                f"block_out_channels {list(self.block_out_channels)} with "
                f"{self.layers_per_block} layers per block make a UNet of "
                f"{self.unet_parameters / 1e9:.1f} billion parameters; the limit is "
                f"{MAX_UNET_PARAMETERS / 1e9:.0f} billion"
            )
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes must be distinct and not empty, got {list(self.modes)}")
        unknown = [m for m in self.modes if m not in SYNTHESIS_MODES]
        if unknown:
            raise ValueError(
                f"unknown mode {unknown[0]!r} in modes; choose from {', '.join(SYNTHESIS_MODES)}"
            )
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be 'dermoscopy' or 'none', got {self.augment!r}")
        for name in ("class_dropout", "full_mask_probability", "class_balance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mask_loss_weight < 1.0:
            raise ValueError(f"mask_loss_weight must be >= 1, got {self.mask_loss_weight}")
        for name in (
            "batch_size",
            "max_train_steps",
            "checkpoint_every",
            "keep_checkpoints",
            "num_train_timesteps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                f"got {self.prediction_type!r}"
            )
        if self.prediction_type == "v_prediction" and self.beta_schedule != ZERO_SNR_SCHEDULE:
            raise ValueError(
                f"v_prediction samples from the last timestep, which needs a schedule that "
                f"ends at (near) zero signal: use beta_schedule {ZERO_SNR_SCHEDULE!r}"
            )
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(
                f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown generator config keys: {sorted(unknown)}")
        # Checkpoints saved before prediction_type existed predicted the noise.
        return cls(**{"prediction_type": "epsilon", **data})

    @classmethod
    def from_json(cls, path: Path) -> GeneratorConfig:
        return cls.from_dict(json.loads(path.read_text()))
