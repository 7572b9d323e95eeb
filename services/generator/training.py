"""Training the class-conditional inpainting diffusion model from scratch.

The loop reads top to bottom: prepare tensors -> build or resume model, EMA, optimiser
and LR schedule -> for each step draw a batch, corrupt it, predict the noise (or v), step ->
checkpoint periodically, on cancel and at the end.

Objective. The UNet predicts the noise added to the *whole* image, or v for generators
that serve "generate" (``config.prediction_type``; see :mod:`.schedulers` for why), and
the known region is also given unnoised as conditioning, so there it learns to copy. The
loss is a
weighted mean squared error whose per-pixel weight is ``mask_loss_weight`` inside the
mask and 1 outside, normalised by the weight sum. The masked region is what inpainting
must invent, so it dominates the gradient, while the unmasked term keeps the network a
valid denoiser everywhere (needed for img2img and for the per-step blending of the
known region during sampling).

Classifier-free guidance. With probability ``class_dropout`` a label is replaced by the
null class ``num_classes``; with probability ``full_mask_probability`` the mask covers
the whole image (nothing known), the path "generate" and "img2img" sample with; the
share follows the modes the generator serves (:func:`~.config.full_mask_share`).

Augmentation follows the modality (``config.augment``): flips and quarter turns for
dermoscopy, nothing for images with a laterality such as chest X-rays.

Resuming. Everything random is drawn from one seeded CPU ``torch.Generator`` whose state
is checkpointed with the model, EMA, optimiser and LR scheduler, so a run that is
canceled (or killed) and resumed from its last checkpoint continues exactly as if it had
never stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from services.generator.checkpoint import (
    CheckpointInfo,
    latest_checkpoint,
    load_training_state,
    prune_checkpoints,
    write_checkpoint,
)
from services.generator.config import GeneratorConfig
from services.generator.masks import auto_masks
from services.generator.model import DiffusionSpace, build_unet, build_vae, unet_autocast
from services.generator.schedulers import training_schedule
from shared.imaging import resize_square

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]
CheckpointCallback = Callable[[CheckpointInfo], None]

# Settings that may change between a run and its resumption (they only set its length
# or its bookkeeping); everything else must match the checkpoint.
_RESUMABLE_CHANGES = frozenset({"max_train_steps", "checkpoint_every", "keep_checkpoints"})
_GRAD_CLIP_NORM = 1.0


@dataclass
class TrainingResult:
    """Outcome of :func:`train_generator`.

    Attributes:
        status: ``"completed"`` when ``max_train_steps`` was reached, ``"canceled"`` when
            ``should_cancel`` stopped the run (a checkpoint was written first).
        step: optimiser steps done in total (including steps before a resume).
        checkpoint: the last checkpoint written (or found, when nothing was left to do).
        loss_curve: (step, loss) for every step of the whole run, resumed parts included.
        resumed_from_step: step of the checkpoint the run resumed from, 0 for a fresh run.
    """

    status: Literal["completed", "canceled"]
    step: int
    checkpoint: CheckpointInfo | None
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    resumed_from_step: int = 0


@dataclass
class TrainingData:
    """Training tensors on CPU: model-space samples and masks, labels.

    ``samples`` (N, c, h, w) float (pixels in [-1, 1] or scaled VAE latents); ``masks``
    (N, 1, h, w) float in {0, 1} on the model grid; ``labels`` (N,) int64;
    ``draw_weights`` (N,) float, relative probability of drawing each image.
    """

    samples: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    draw_weights: torch.Tensor | None = None


def train_generator(
    images: np.ndarray,
    masks: np.ndarray | None,
    labels: np.ndarray,
    class_names: Sequence[str],
    config: GeneratorConfig,
    checkpoint_dir: Path,
    *,
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
    on_checkpoint: CheckpointCallback | None = None,
) -> TrainingResult:
    """Train (or resume training) a generator on a labelled image set.

    Args:
        images: uint8 (N, H, W, C) with C == ``config.channels`` (grayscale may also be
            (N, H, W)); resized to ``config.resolution`` when H or W differ.
        masks: uint8 (N, H, W), 255 = lesion, 0 = background; ``None`` segments them
            automatically (:func:`services.generator.masks.auto_masks`).
        labels: int (N,) class ids in [0, ``config.num_classes``).
        class_names: one name per class, stored in the checkpoint config.
        config: model and training settings.
        checkpoint_dir: local directory of checkpoints; when it holds one, training
            resumes from the newest (same config required, run length may grow).
        device: torch device; default CUDA when available, else CPU.
        progress: called as ``progress(step, max_train_steps)`` after every step.
        should_cancel: polled after every step; ``True`` checkpoints and returns.
        on_checkpoint: called with each checkpoint as soon as it is written (e.g. to
            upload it). Older checkpoints beyond ``config.keep_checkpoints`` are deleted
            only after it returns, so one that raises deletes nothing.

    Returns:
        A :class:`TrainingResult`.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = _with_class_names(config, class_names)
    checkpoint_dir = Path(checkpoint_dir)
    resume = latest_checkpoint(checkpoint_dir)
    state = load_training_state(resume.path) if resume is not None else None
    if state is not None:
        _check_resumable(GeneratorConfig.from_dict(state["config"]), config)

    torch.manual_seed(config.seed)  # weight init; replaced by the checkpoint on resume
    unet = build_unet(config).to(device)
    vae = build_vae(config).to(device).eval().requires_grad_(False) if config.latent else None
    space = DiffusionSpace(config, vae)
    data = prepare_training_data(images, masks, labels, config, space, device)

    ema = EMAModel(
        unet.parameters(), decay=config.ema_decay, model_cls=UNet2DModel, model_config=unet.config
    )
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay
    )
    lr_schedule = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_train_steps,
    )
    schedule = training_schedule(
        config.num_train_timesteps, config.beta_schedule, config.prediction_type or "epsilon"
    )
    rng = torch.Generator().manual_seed(config.seed + 1)
    step, loss_curve = 0, []
    if state is not None:
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_scheduler"])
        rng.set_state(state["rng"])
        step = int(state["step"])
        loss_curve = [(int(s), float(v)) for s, v in state["loss_curve"]]
        logger.info("resuming generator training from step %d (%s)", step, resume.path)
    resumed_from = step

    def save() -> CheckpointInfo:
        # Clone the raw weights: ema.copy_to below overwrites the live parameters in place.
        raw_weights = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        training_state = {
            "config": config.to_dict(),
            "unet": raw_weights,
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_schedule.state_dict(),
            "rng": rng.get_state(),
            "step": step,
            "loss_curve": loss_curve,
        }
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        try:
            info = write_checkpoint(
                checkpoint_dir,
                step=step,
                config=config,
                inference_unet=unet,
                vae=vae,
                training_state=training_state,
            )
        finally:
            ema.restore(unet.parameters())
        if on_checkpoint is not None:
            on_checkpoint(info)
        prune_checkpoints(checkpoint_dir, config.keep_checkpoints)
        return info

    last_saved = resume
    unet.train()
    while step < config.max_train_steps:
        batch = _draw_batch(data, config, rng)
        loss = training_step(unet, space, schedule, batch, config, rng, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), _GRAD_CLIP_NORM)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        step += 1
        loss_curve.append((step, float(loss.detach())))
        if progress is not None:
            progress(step, config.max_train_steps)
        if step % config.checkpoint_every == 0 or step == config.max_train_steps:
            last_saved = save()
        if should_cancel is not None and step < config.max_train_steps and should_cancel():
            if last_saved is None or last_saved.step != step:
                last_saved = save()
            return TrainingResult("canceled", step, last_saved, loss_curve, resumed_from)
    if last_saved is None or last_saved.step != step:
        last_saved = save()  # resumed at or past max_train_steps: checkpoint exists already
    return TrainingResult("completed", step, last_saved, loss_curve, resumed_from)


def prepare_training_data(
    images: np.ndarray,
    masks: np.ndarray | None,
    labels: np.ndarray,
    config: GeneratorConfig,
    space: DiffusionSpace,
    device: torch.device,
    *,
    encode_batch: int = 64,
) -> TrainingData:
    """Validate arrays, resize to the configured resolution and map to model space."""
    images = np.asarray(images)
    if images.ndim == 3 and config.channels == 1:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if images.shape[3] != config.channels:
        raise ValueError(
            f"images have {images.shape[3]} channels, config.channels is {config.channels}"
        )
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    if len(images) == 0:
        raise ValueError("cannot train on an empty image set")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(
            f"labels must be in [0, {config.num_classes}), got range "
            f"[{labels.min()}, {labels.max()}]"
        )
    if masks is None:
        masks = auto_masks(images)
    masks = np.asarray(masks)
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks must have shape {images.shape[:3]}, got {masks.shape}")
    size = config.resolution
    if images.shape[1:3] != (size, size):
        images = np.stack([_resize(image, size) for image in images])
        masks = np.stack([resize_square(mask, size, nearest=True) for mask in masks])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    mask_t = torch.from_numpy((masks > 0).astype(np.float32))[:, None]
    samples = []
    with torch.no_grad():
        for chunk in torch.split(pixels, encode_batch):
            samples.append(space.encode(chunk.to(device)).float().cpu())
    return TrainingData(
        torch.cat(samples),
        space.mask_to_model(mask_t),
        torch.from_numpy(labels.astype(np.int64)),
        class_balanced_weights(labels, config.class_balance),
    )


def class_balanced_weights(labels: np.ndarray, balance: float) -> torch.Tensor:
    """Per-image draw weights ``n_class ** -balance`` (float64, (N,)); see the config."""
    counts = np.bincount(labels)
    return torch.from_numpy(counts[labels].astype(np.float64) ** -balance)


def training_step(
    unet: UNet2DModel,
    space: DiffusionSpace,
    noise_schedule: DDPMScheduler,
    batch: TrainingData,
    config: GeneratorConfig,
    rng: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Mask-weighted loss (scalar) of one batch on the noise, or on v for a v-prediction
    generator; see module docstring."""
    n = batch.samples.shape[0]
    noise = torch.randn(batch.samples.shape, generator=rng)
    timesteps = torch.randint(0, config.num_train_timesteps, (n,), generator=rng)
    assert config.full_mask_probability is not None  # resolved from modes by the config
    full = torch.rand(n, generator=rng) < config.full_mask_probability
    dropped = torch.rand(n, generator=rng) < config.class_dropout
    samples, noise = batch.samples.to(device), noise.to(device)
    mask = torch.where(full.view(-1, 1, 1, 1), torch.ones_like(batch.masks), batch.masks)
    mask = mask.to(device)
    labels = drop_class_labels(batch.labels, dropped, config.null_class_id).to(device)
    timesteps = timesteps.to(device)
    noisy = noise_schedule.add_noise(samples, noise, timesteps)
    unet_input = space.unet_input(noisy, samples * (1.0 - mask), mask)
    with unet_autocast(device, config):
        prediction = unet(unet_input, timesteps, class_labels=labels).sample
    if config.prediction_type == "v_prediction":
        target = noise_schedule.get_velocity(samples, noise, timesteps)
    else:
        target = noise
    weight = 1.0 + (config.mask_loss_weight - 1.0) * mask
    squared = (prediction.float() - target) ** 2 * weight
    per_example = squared.sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) * samples.shape[1])
    return per_example.mean()


def drop_class_labels(
    labels: torch.Tensor, dropped: torch.Tensor, null_class_id: int
) -> torch.Tensor:
    """Replace ``labels[dropped]`` with the null class (classifier-free guidance)."""
    return torch.where(dropped, torch.full_like(labels, null_class_id), labels)


def _draw_batch(data: TrainingData, config: GeneratorConfig, rng: torch.Generator) -> TrainingData:
    assert data.draw_weights is not None
    index = torch.multinomial(data.draw_weights, config.batch_size, replacement=True, generator=rng)
    samples, masks = data.samples[index], data.masks[index]
    if config.augment == "dermoscopy" and not config.latent:
        samples, masks = dihedral_augment(samples, masks, rng)
    return TrainingData(samples, masks, data.labels[index])


def dihedral_augment(
    samples: torch.Tensor, masks: torch.Tensor, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (sample, mask) pair turned by one of the 8 symmetries of the square, drawn
    uniformly: a horizontal flip or not, then 0-3 quarter turns.

    A dermoscopic lesion is photographed from above, so none of these changes what it
    is, and each multiplies the backgrounds a tail class is painted on. Not for chest
    X-rays (``config.augment = "none"``): a flip puts the heart on the wrong side.

    Args:
        samples: (N, C, S, S) float, square.
        masks: (N, 1, S, S) float, turned with their samples.
    """
    n = samples.shape[0]
    flips = torch.rand(n, generator=rng) < 0.5
    turns = torch.randint(0, 4, (n,), generator=rng)
    out_samples, out_masks = samples.clone(), masks.clone()
    for i in range(n):
        sample, mask = samples[i], masks[i]
        if flips[i]:
            sample, mask = sample.flip(-1), mask.flip(-1)
        k = int(turns[i])
        out_samples[i] = torch.rot90(sample, k, dims=(-2, -1))
        out_masks[i] = torch.rot90(mask, k, dims=(-2, -1))
    return out_samples, out_masks


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[2] == 1:
        return resize_square(image[..., 0], size)[..., None]
    return resize_square(image, size)


def _with_class_names(config: GeneratorConfig, class_names: Sequence[str]) -> GeneratorConfig:
    names = tuple(str(n) for n in class_names)
    if len(names) != config.num_classes:
        raise ValueError(f"{len(names)} class names for num_classes={config.num_classes}")
    return GeneratorConfig.from_dict({**config.to_dict(), "class_names": names})


def _check_resumable(saved: GeneratorConfig, current: GeneratorConfig) -> None:
    before, after = saved.to_dict(), current.to_dict()
    changed = sorted(k for k in before if before[k] != after[k] and k not in _RESUMABLE_CHANGES)
    if changed:
        raise ValueError(
            f"checkpoint directory holds a run with a different config ({', '.join(changed)}); "
            f"use a new directory or the same settings"
        )
