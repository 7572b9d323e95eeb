"""Network construction for the from-scratch generator: a class-conditional UNet and,
in latent mode, the ``AutoencoderKL`` it diffuses in.

The UNet's input is the noisy sample, the masked known image and the mask stacked on
the channel axis (``2 * C + 1`` channels, the layout of diffusers' inpainting UNets);
its output is the predicted noise (``C`` channels). The class embedding has
``num_classes + 1`` rows; the last one is the null class of classifier-free guidance.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DModel

from services.generator.config import GeneratorConfig


def build_unet(config: GeneratorConfig) -> UNet2DModel:
    """A freshly initialised UNet for ``config`` (weights from the global torch RNG)."""
    levels = range(len(config.block_out_channels))
    attention = set(config.attention_levels)
    down = tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels)
    # Up blocks run from the lowest resolution back up, so the attention flags reverse.
    up = tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels))
    return UNet2DModel(
        sample_size=config.sample_size,
        in_channels=2 * config.model_channels + 1,
        out_channels=config.model_channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        num_class_embeds=config.num_classes + 1,
        norm_num_groups=_norm_groups(config.block_out_channels),
        attention_head_dim=8,
    )


def build_vae(config: GeneratorConfig) -> AutoencoderKL:
    """The latent-mode autoencoder: loaded from ``config.vae_path`` or built untrained."""
    if config.vae_path is not None:
        vae = AutoencoderKL.from_pretrained(config.vae_path, local_files_only=True)
        if vae.config.in_channels != config.channels:
            raise ValueError(
                f"VAE at {config.vae_path} takes {vae.config.in_channels} channels, "
                f"images have {config.channels}"
            )
        if vae.config.latent_channels != config.latent_channels:
            raise ValueError(
                f"VAE latent has {vae.config.latent_channels} channels, config says "
                f"{config.latent_channels}"
            )
        return vae
    levels = len(config.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=config.channels,
        out_channels=config.channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae_block_out_channels,
        latent_channels=config.latent_channels,
        norm_num_groups=_norm_groups(config.vae_block_out_channels),
        sample_size=config.resolution,
    )


def unet_autocast(device: torch.device, config: GeneratorConfig
                  ) -> contextlib.AbstractContextManager:
    """bf16 autocast for the UNet on CUDA when ``config.mixed_precision`` asks for it
    (training and sampling alike); float32 on the CPU."""
    if device.type == "cuda" and config.mixed_precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _norm_groups(widths: tuple[int, ...]) -> int:
    """Largest GroupNorm group count (<= 32) dividing every width, so tiny models build."""
    for groups in (32, 16, 8, 4, 2, 1):
        if all(w % groups == 0 for w in widths):
            return groups
    return 1


@dataclass
class DiffusionSpace:
    """Maps pixel tensors to the space the UNet diffuses in, and back.

    Pixel tensors are float (N, C, H, W) in [-1, 1]; masks are float (N, 1, H, W) in
    {0, 1} with 1 = region to paint. In pixel mode this is the identity; in latent mode
    images go through the VAE (scaled by its ``scaling_factor``) and masks are
    max-pooled to the latent grid, so a latent cell touching the lesion counts as masked.
    """

    config: GeneratorConfig
    vae: AutoencoderKL | None = None

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, c, h, w) model-space sample (mean of q(z|x))."""
        if self.vae is None:
            return pixels
        latent = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        return latent * self.vae.config.scaling_factor

    def decode(self, sample: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`; output clamped to [-1, 1]."""
        if self.vae is None:
            return sample.clamp(-1.0, 1.0)
        pixels = self.vae.decode(sample.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return pixels.clamp(-1.0, 1.0)

    def mask_to_model(self, mask: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) pixel mask -> (N, 1, h, w) mask on the model grid."""
        factor = self.config.vae_scale_factor
        return mask if factor == 1 else F.max_pool2d(mask, kernel_size=factor)

    def unet_input(
        self, noisy: torch.Tensor, masked_known: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Stack noisy sample, known (masked) sample and mask: (N, 2c + 1, h, w)."""
        return torch.cat([noisy, masked_known, mask], dim=1)
