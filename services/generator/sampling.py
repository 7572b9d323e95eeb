"""Sampling from a trained generator: inpaint, img2img and class-conditional generation.

All three modes run the same loop with the same argument names (diffusers' habit):
``inpaint(images, masks, class_ids, seeds, ...)``, ``img2img(images, class_ids, strength,
seeds, ...)``, ``generate(class_ids, seeds, ...)``. ``generate`` and ``img2img`` use an
all-ones mask (nothing known), which the model saw in ``full_mask_probability`` of its
training examples: half of them (all, without inpaint) when it was trained with those
modes in ``config.modes``, a tenth for an inpaint-only generator (the service refuses
the modes a generator was not trained for).

Determinism. Every image has its own seeded CPU ``torch.Generator`` for its initial noise
and any scheduler noise, so an image depends on its seed, the model and the device - not
on the batch it happens to be in (up to float round-off of batched kernels).

Keeping the source. Inpainting blends the known region back at every step (the source
noised to the next timestep with the image's own initial noise, as diffusers' inpainting
pipeline does for non-inpainting UNets), so the painted region is generated in context;
and at the end the unmasked pixels are pasted back from the source exactly, so they are
bit-identical to the input (in latent mode the VAE would otherwise blur them).

Guidance. Classifier-free guidance mixes the conditional and null-class predictions:
``eps = eps_null + g * (eps_class - eps_null)`` (``g = 1``: conditional only, no extra
pass). Optional classifier guidance (IOIS) adds ``-sqrt(1 - alpha_bar_t) * s * grad log
p(y | x)`` to the noise prediction; the classifier is not noise-aware, so it is evaluated
on the denoised estimate ``x0_hat(x_t)`` (decoded to pixels) and the gradient flows back
to ``x_t`` through that estimate.
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from services.generator.batching import run_in_batches
from services.generator.checkpoint import CONFIG_FILE, read_manifest, verify_checkpoint
from services.generator.config import GeneratorConfig
from services.generator.model import DiffusionSpace, unet_autocast
from services.generator.schedulers import SCHEDULER_NAMES, make_scheduler
from shared.errors import InvalidInput
from shared.sampling_params import min_inference_steps

logger = logging.getLogger(__name__)

Mode = Literal["inpaint", "img2img", "generate"]
ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]

MAX_INFERENCE_STEPS = 1000
# PNDM's first step (a Runge-Kutta-like warm-up) evaluates the model at the second
# timestep, which with 2 steps is t = 0: there eps = (x - a x0) / sqrt(1 - alpha_bar_0)
# turns a 1 % error of the network into ~50 grey levels of noise in the final image
# (tests/generator/test_schedulers.py). The API refuses fewer steps at the request
# (MIN_INFERENCE_STEPS lives in shared.sampling_params for that).
MAX_GUIDANCE_SCALE = 30.0
# alpha_bar of the first "leading" timestep with 25 steps (t = 960): classifier guidance
# of v-prediction generators, which start at alpha_bar ~ 0, begins there.
_GUIDANCE_MIN_ALPHA_BAR = 4e-3
_CACHE_SIZE = 2


class SamplingParameterError(InvalidInput, ValueError):
    """A sampling parameter of the request is out of range: the user's to fix, so a job
    that meets it fails with this message (an :class:`InvalidInput`), not as an internal
    error. Still a ``ValueError``, as diffusers' ``check_inputs`` raise."""


@dataclass(frozen=True)
class SamplingParameters:
    """How a set of images was sampled (recorded in provenance).

    Attributes:
        mode: ``"inpaint"``, ``"img2img"`` or ``"generate"``.
        scheduler: scheduler name (see :data:`SCHEDULER_NAMES`).
        num_inference_steps: denoising steps, 1-1000 (img2img runs ``strength`` of them).
        guidance_scale: classifier-free guidance scale, 0-30 (1 = no guidance).
        strength: img2img noise level in (0, 1]; 1.0 for the other modes.
        classifier_scale: classifier-guidance scale, >= 0 (0 = off).
    """

    mode: Mode
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    strength: float = 1.0
    classifier_scale: float = 0.0


@dataclass
class GenerationResult:
    """Images sampled by one call.

    Attributes:
        images: uint8 (n, H, W, C), the first ``n`` requested images (all of them unless
            canceled).
        class_ids: (n,) int64 requested classes of those images.
        seeds: (n,) int64 their seeds.
        parameters: the sampling parameters.
        checkpoint_sha256: sha256 of the checkpoint sampled from.
        canceled: the call stopped early because ``should_cancel`` returned ``True``.
        batch_size: batch size in use at the end (smaller than asked after CUDA OOM).
    """

    images: np.ndarray
    class_ids: np.ndarray
    seeds: np.ndarray
    parameters: SamplingParameters
    checkpoint_sha256: str
    canceled: bool
    batch_size: int


@dataclass
class TrainedGenerator:
    """A generator checkpoint loaded for sampling (EMA weights, eval mode, no grad)."""

    config: GeneratorConfig
    unet: UNet2DModel
    vae: AutoencoderKL | None
    sha256: str
    device: torch.device

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    def inpaint(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        class_ids: np.ndarray,
        seeds: np.ndarray,
        *,
        scheduler: str = "ddim",
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        batch_size: int = 16,
        classifier: torch.nn.Module | None = None,
        classifier_scale: float = 0.0,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCallback | None = None,
    ) -> GenerationResult:
        """Paint a lesion of ``class_ids[i]`` into the mask of ``images[i]``.

        Args:
            images: uint8 (N, H, W, C) (or (N, H, W) when C = 1), H = W = resolution.
            masks: uint8 (N, H, W), nonzero = region to paint; the rest is kept exactly.
            class_ids: (N,) int in [0, num_classes).
            seeds: (N,) int in [0, 2**63): one per image.
            scheduler, num_inference_steps, guidance_scale: see :class:`SamplingParameters`.
            batch_size: images per forward pass (halved on CUDA OOM).
            classifier: optional module mapping float (B, C, H, W) images in [0, 1] to
                (B, num_classes) logits, for classifier guidance.
            classifier_scale: classifier-guidance scale (>= 0).
            progress: ``progress(images_done, N)`` after each batch.
            should_cancel: polled between batches.
        """
        params = SamplingParameters(
            "inpaint", scheduler, num_inference_steps, guidance_scale, 1.0, classifier_scale
        )
        return self._sample(
            params, images, masks, class_ids, seeds, batch_size, classifier, progress, should_cancel
        )

    def img2img(
        self,
        images: np.ndarray,
        class_ids: np.ndarray,
        strength: float,
        seeds: np.ndarray,
        *,
        scheduler: str = "ddim",
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        batch_size: int = 16,
        classifier: torch.nn.Module | None = None,
        classifier_scale: float = 0.0,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCallback | None = None,
    ) -> GenerationResult:
        """Re-synthesise whole ``images`` towards ``class_ids``; ``strength`` in (0, 1]
        is the fraction of the noise schedule applied (1 = ignore the source).
        Other arguments as :meth:`inpaint`."""
        params = SamplingParameters(
            "img2img", scheduler, num_inference_steps, guidance_scale, strength, classifier_scale
        )
        return self._sample(
            params, images, None, class_ids, seeds, batch_size, classifier, progress, should_cancel
        )

    def generate(
        self,
        class_ids: np.ndarray,
        seeds: np.ndarray,
        *,
        scheduler: str = "ddim",
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        batch_size: int = 16,
        classifier: torch.nn.Module | None = None,
        classifier_scale: float = 0.0,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCallback | None = None,
    ) -> GenerationResult:
        """Generate whole images of ``class_ids`` from noise. Arguments as :meth:`inpaint`."""
        params = SamplingParameters(
            "generate", scheduler, num_inference_steps, guidance_scale, 1.0, classifier_scale
        )
        return self._sample(
            params, None, None, class_ids, seeds, batch_size, classifier, progress, should_cancel
        )

    def _sample(
        self,
        params: SamplingParameters,
        images: np.ndarray | None,
        masks: np.ndarray | None,
        class_ids: np.ndarray,
        seeds: np.ndarray,
        batch_size: int,
        classifier: torch.nn.Module | None,
        progress: ProgressCallback | None,
        should_cancel: CancelCallback | None,
    ) -> GenerationResult:
        images, masks, class_ids, seeds = check_inputs(
            self.config, params, images, masks, class_ids, seeds
        )
        if params.classifier_scale > 0 and classifier is None:
            raise ValueError("classifier_scale > 0 needs a classifier")

        def run_batch(start: int, end: int) -> np.ndarray:
            return self._sample_batch(
                params,
                images[start:end],
                masks[start:end],
                class_ids[start:end],
                seeds[start:end],
                classifier,
            )

        run = run_in_batches(
            len(seeds), batch_size, run_batch, progress=progress, should_cancel=should_cancel
        )
        size, channels = self.config.resolution, self.config.channels
        done = (
            np.concatenate(run.results)
            if run.results
            else np.zeros((0, size, size, channels), np.uint8)
        )
        return GenerationResult(
            done,
            class_ids[: run.completed],
            seeds[: run.completed],
            params,
            self.sha256,
            run.canceled,
            run.batch_size,
        )

    def _sample_batch(
        self,
        params: SamplingParameters,
        images: np.ndarray,
        masks: np.ndarray,
        class_ids: np.ndarray,
        seeds: np.ndarray,
        classifier: torch.nn.Module | None,
    ) -> np.ndarray:
        """One batch through the denoising loop -> uint8 (B, H, W, C)."""
        device, space = self.device, DiffusionSpace(self.config, self.vae)
        scheduler = make_scheduler(
            params.scheduler,
            self.config.num_train_timesteps,
            self.config.beta_schedule,
            self.config.prediction_type or "epsilon",
        )
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        pixels = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        mask = torch.from_numpy((masks > 0).astype(np.float32))[:, None].to(device)
        labels = torch.from_numpy(class_ids).to(device)
        with torch.no_grad():
            known = space.encode(pixels) if params.mode != "generate" else None
        model_mask = space.mask_to_model(mask)
        shape = (
            len(seeds),
            self.config.model_channels,
            self.config.sample_size,
            self.config.sample_size,
        )
        noise = randn_tensor(shape, generator=generators, device=device, dtype=torch.float32)
        masked_known = (
            known * (1.0 - model_mask) if known is not None else torch.zeros(shape, device=device)
        )

        scheduler.set_timesteps(params.num_inference_steps, device=device)
        timesteps = _timesteps_for_strength(scheduler, params.num_inference_steps, params.strength)
        if params.mode == "img2img" and params.strength < 1.0:
            assert known is not None
            sample = scheduler.add_noise(known, noise, timesteps[:1].repeat(len(seeds)))
        else:
            sample = noise * scheduler.init_noise_sigma
        step_kwargs = _step_kwargs(scheduler, generators)

        for index, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(sample, t)
            with torch.no_grad():  # the noise, or v (scheduler.config.prediction_type)
                prediction = self._guided_noise(
                    model_input, masked_known, model_mask, t, labels, params.guidance_scale
                )
            if classifier is not None and params.classifier_scale > 0:
                prediction = _classifier_guidance(
                    prediction,
                    model_input,
                    t,
                    labels,
                    scheduler,
                    space,
                    classifier,
                    params.classifier_scale,
                )
            sample = scheduler.step(prediction, t, sample, **step_kwargs).prev_sample
            if params.mode == "inpaint" and index + 1 < len(timesteps):
                assert known is not None
                next_t = timesteps[index + 1 : index + 2].repeat(len(seeds))
                renoised = scheduler.add_noise(known, noise, next_t)
                sample = model_mask * sample + (1.0 - model_mask) * renoised
        with torch.no_grad():
            out = _to_uint8(space.decode(sample).float())
        if params.mode == "inpaint":
            # Paste the known pixels back bit-exactly (see module docstring).
            out = np.where(masks[..., None] > 0, out, images)
        return out

    def _guided_noise(
        self,
        model_input: torch.Tensor,
        masked_known: torch.Tensor,
        model_mask: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Noise prediction with classifier-free guidance (one doubled batch when g != 1)."""
        unet_input = torch.cat([model_input, masked_known, model_mask], dim=1)
        if guidance_scale == 1.0:
            with unet_autocast(self.device, self.config):
                return self.unet(unet_input, t, class_labels=labels).sample.float()
        null = torch.full_like(labels, self.config.null_class_id)
        with unet_autocast(self.device, self.config):
            both = self.unet(
                torch.cat([unet_input, unet_input]), t, class_labels=torch.cat([labels, null])
            ).sample.float()
        eps_class, eps_null = both.chunk(2)
        return eps_null + guidance_scale * (eps_class - eps_null)


def check_inputs(
    config: GeneratorConfig,
    params: SamplingParameters,
    images: np.ndarray | None,
    masks: np.ndarray | None,
    class_ids: np.ndarray,
    seeds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate sampling inputs for a trained generator (square images at its resolution).

    See :func:`check_request`; returns its normalised arrays.
    """
    size = config.resolution
    return check_request(
        params,
        images,
        masks,
        class_ids,
        seeds,
        num_classes=config.num_classes,
        channels=config.channels,
        image_size=(size, size),
        scheduler_names=SCHEDULER_NAMES,
        prediction_type=config.prediction_type or "epsilon",
    )


def check_request(
    params: SamplingParameters,
    images: np.ndarray | None,
    masks: np.ndarray | None,
    class_ids: np.ndarray,
    seeds: np.ndarray,
    *,
    num_classes: int,
    channels: int,
    image_size: tuple[int, int] | None,
    scheduler_names: tuple[str, ...] = SCHEDULER_NAMES,
    size_multiple: int = 1,
    prediction_type: str = "epsilon",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a sampling request; raise ``ValueError`` naming the offending argument.

    Args:
        image_size: required (H, W) of input images; ``None`` accepts any size that is a
            multiple of ``size_multiple`` (and is required for ``generate``).

    Returns:
        Normalised ``(images (N, H, W, C) uint8, masks (N, H, W) uint8, class_ids (N,)
        int64, seeds (N,) int64)``; ``generate`` gets zero images, and the modes other
        than inpaint get all-ones masks.
    """
    if params.scheduler not in scheduler_names:
        raise SamplingParameterError(
            f"unknown scheduler {params.scheduler!r}; choose one of {', '.join(scheduler_names)}",
            field="sampling.scheduler",
        )
    steps = params.num_inference_steps
    if not 1 <= steps <= MAX_INFERENCE_STEPS:
        raise SamplingParameterError(
            f"num_inference_steps must be in [1, {MAX_INFERENCE_STEPS}], got {steps}",
            field="sampling.num_inference_steps",
        )
    fewest = min_inference_steps(params.scheduler, prediction_type)
    if steps < fewest:
        raise SamplingParameterError(
            f"num_inference_steps must be >= {fewest} with {params.scheduler}, got {steps}",
            field="sampling.num_inference_steps",
        )
    if not 0.0 <= params.guidance_scale <= MAX_GUIDANCE_SCALE:
        raise SamplingParameterError(
            f"guidance_scale must be in [0, {MAX_GUIDANCE_SCALE}], got {params.guidance_scale}",
            field="sampling.guidance_scale",
        )
    if not 0.0 < params.strength <= 1.0:
        raise SamplingParameterError(
            f"strength must be in (0, 1], got {params.strength}", field="sampling.strength"
        )
    if params.classifier_scale < 0:
        raise SamplingParameterError(
            f"classifier_scale must be >= 0, got {params.classifier_scale}",
            field="classifier_guidance.scale",
        )
    class_ids = np.asarray(class_ids)
    seeds = np.asarray(seeds)
    if class_ids.ndim != 1 or not np.issubdtype(class_ids.dtype, np.integer):
        raise ValueError(
            f"class_ids must be a 1-D integer array, got {class_ids.dtype} {class_ids.shape}"
        )
    n = len(class_ids)
    if seeds.shape != (n,) or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(
            f"seeds must be {n} integers (one per image), got {seeds.dtype} {seeds.shape}"
        )
    if n and (seeds.min() < 0):
        raise ValueError(f"seeds must be >= 0, got {int(seeds.min())}")
    bad = class_ids[(class_ids < 0) | (class_ids >= num_classes)]
    if bad.size:
        raise ValueError(
            f"unknown class id {int(bad[0])}: the generator has "
            f"{num_classes} classes (0-{num_classes - 1})"
        )
    if params.mode == "generate":
        if image_size is None:
            raise ValueError("generate needs an image size")
        images = np.zeros((n, *image_size, channels), np.uint8)
    else:
        images = _check_images(images, n, image_size, channels, size_multiple)
    height, width = images.shape[1:3]
    if params.mode == "inpaint":
        masks = _check_masks(masks, n, height, width)
    else:
        masks = np.full((n, height, width), 255, np.uint8)
    return images, masks, class_ids.astype(np.int64), seeds.astype(np.int64)


def _check_images(
    images: np.ndarray | None,
    n: int,
    image_size: tuple[int, int] | None,
    channels: int,
    size_multiple: int,
) -> np.ndarray:
    if images is None:
        raise ValueError("images are required for this mode")
    images = np.asarray(images)
    if images.ndim == 3 and channels == 1:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    height, width = image_size if image_size is not None else images.shape[1:3]
    if images.shape != (n, height, width, channels):
        raise ValueError(
            f"images must have shape ({n}, {height}, {width}, {channels}) to match class_ids "
            f"and the generator ({channels} channels), got {images.shape}; resize with "
            f"shared.imaging.resize_square"
        )
    if height % size_multiple or width % size_multiple:
        raise ValueError(
            f"image height and width must be multiples of {size_multiple}, got {height}x{width}"
        )
    return images


def _check_masks(masks: np.ndarray | None, n: int, height: int, width: int) -> np.ndarray:
    if masks is None:
        raise ValueError("inpaint needs masks")
    masks = np.asarray(masks)
    if masks.shape != (n, height, width):
        raise ValueError(
            f"masks must have shape ({n}, {height}, {width}) (one per image, same "
            f"height and width), got {masks.shape}"
        )
    empty = np.flatnonzero(~masks.reshape(n, -1).any(axis=1))
    if empty.size:
        raise ValueError(f"mask {int(empty[0])} is empty: nothing to paint")
    return masks


def _timesteps_for_strength(scheduler: SchedulerMixin, steps: int, strength: float) -> torch.Tensor:
    """The tail of the schedule that img2img runs (diffusers' ``get_timesteps``)."""
    if strength >= 1.0:
        return scheduler.timesteps
    init = min(max(int(round(steps * strength)), 1), steps)
    start = (steps - init) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def _step_kwargs(scheduler: SchedulerMixin, generators: list[torch.Generator]) -> dict[str, Any]:
    """Pass the per-image generators to schedulers that draw noise (DDPM, Euler...)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in accepted:
        kwargs["generator"] = generators
    if "eta" in accepted:
        kwargs["eta"] = 0.0  # deterministic DDIM
    return kwargs


def _classifier_guidance(
    prediction: torch.Tensor,
    model_input: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    scheduler: SchedulerMixin,
    space: DiffusionSpace,
    classifier: torch.nn.Module,
    scale: float,
) -> torch.Tensor:
    """``eps - sqrt(1 - alpha_bar_t) * scale * grad_x log p(y | x0_hat(x))``.

    ``prediction`` is the noise, or v for a v-prediction scheduler: then it is turned
    into the noise, guided the same way and turned back, so both move x0_hat alike;
    above the noise level epsilon generators start at (alpha_bar < 4e-3) it is left
    unguided, where the classifier would see an all-noise x0_hat.
    """
    alpha_bar = scheduler.alphas_cumprod.to(model_input.device)[t.long()]
    a, s = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    if v_prediction and float(alpha_bar) < _GUIDANCE_MIN_ALPHA_BAR:
        return prediction
    eps = a * prediction + s * model_input if v_prediction else prediction
    with torch.enable_grad():
        x = model_input.detach().requires_grad_(True)
        x0_hat = (x - s * eps.detach()) / a
        pixels = (space.decode(x0_hat).float() + 1.0) / 2.0
        log_probs = torch.log_softmax(classifier(pixels).float(), dim=1)
        selected = log_probs[torch.arange(len(labels)), labels].sum()
        (grad,) = torch.autograd.grad(selected, x)
    shift = -s * scale * grad
    return prediction + shift / a if v_prediction else eps + shift


def _to_uint8(out: torch.Tensor) -> np.ndarray:
    """[-1, 1] float (B, C, H, W) -> uint8 (B, H, W, C)."""
    pixels = ((out + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


_GENERATOR_CACHE: OrderedDict[tuple[str, str], TrainedGenerator] = OrderedDict()


def load_generator(
    checkpoint_path: Path | str,
    *,
    device: str | torch.device | None = None,
    verify: bool = True,
) -> TrainedGenerator:
    """Load a checkpoint for sampling, reusing an already loaded copy of the same sha256.

    Models are kept in a small per-process LRU cache keyed by (checkpoint sha256, device),
    so a worker loads a generator once and serves many tasks with it.

    Args:
        checkpoint_path: a ``checkpoint-<step>`` directory written by training.
        device: torch device; default CUDA when available, else CPU.
        verify: recompute file hashes on first load (detects corrupt copies).
    """
    path = Path(checkpoint_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not (path / CONFIG_FILE).is_file():
        raise ValueError(f"{path} is not a generator checkpoint (no {CONFIG_FILE})")
    sha256 = str(read_manifest(path)["sha256"])
    key = (sha256, str(device))
    if key in _GENERATOR_CACHE:
        _GENERATOR_CACHE.move_to_end(key)
        return _GENERATOR_CACHE[key]
    if verify:
        verify_checkpoint(path)
    config = GeneratorConfig.from_json(path / CONFIG_FILE)
    unet = UNet2DModel.from_pretrained(path / "unet").to(device).eval().requires_grad_(False)
    vae = None
    if config.latent:
        vae = AutoencoderKL.from_pretrained(path / "vae").to(device).eval().requires_grad_(False)
    generator = TrainedGenerator(config, unet, vae, sha256, device)
    _GENERATOR_CACHE[key] = generator
    while len(_GENERATOR_CACHE) > _CACHE_SIZE:
        _GENERATOR_CACHE.popitem(last=False)
    logger.info("loaded generator %s (%s) on %s", sha256[:12], path, device)
    return generator


def clear_generator_cache() -> None:
    """Forget loaded generators (frees their memory once no caller holds them)."""
    _GENERATOR_CACHE.clear()
