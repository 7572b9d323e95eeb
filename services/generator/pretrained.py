"""Pretrained Stable Diffusion weights: offline loading, three modes, LoRA fine-tuning.

Weights come from a local directory in diffusers layout (``model_index.json`` plus one
folder per component) or a model id already in the local Hugging Face cache; nothing is
ever downloaded (``local_files_only=True``) and only safetensors weights are read
(``use_safetensors=True``: a pickle in a tenant's weights never runs). A service passes
its ``weights_roots``, and only directories inside them (see
:mod:`services.generator.weights_source`) or cached model ids load. The three
pipelines - text-to-image, img2img and inpaint - share one set of components (no second
copy in memory).

Classes become prompts through :class:`~services.generator.prompts.PromptTemplates`, so
the sampling surface is the same as a trained generator's: ``inpaint(images, masks,
class_ids, seeds, ...)``, ``img2img(images, class_ids, strength, seeds, ...)``,
``generate(class_ids, seeds, ...)``, per-image seeded generators, batches that halve on
CUDA OOM, and the known pixels pasted back exactly after inpainting.

LoRA fine-tuning (peft) adapts the UNet's attention projections to the dataset with the
usual text-to-image denoising loss; the adapter is saved next to a copy of the base
pipeline and loaded automatically with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from services.generator.batching import run_in_batches
from services.generator.prompts import PromptTemplates
from services.generator.sampling import (
    GenerationResult,
    SamplingParameterError,
    SamplingParameters,
    check_request,
)
from services.generator.schedulers import SCHEDULER_NAMES, scheduler_from_config
from services.generator.weights_source import WeightsSourceRefused, resolve_source_directory

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_HASHED_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")
_CACHE_SIZE = 2


_PIPELINE_CACHE: OrderedDict[tuple[object, ...], PretrainedGenerator] = OrderedDict()


class PretrainedWeightsError(ValueError):
    """The weights cannot be used: not found offline, or not a diffusers pipeline."""


@dataclass
class PretrainedGenerator:
    """Stable Diffusion pipelines sharing components, driven by class ids and prompts.

    Attributes:
        text2img, img2img_pipeline, inpaint_pipeline: the diffusers pipelines.
        class_names: class labels; ``class_ids`` index into them.
        prompts: how a class becomes a prompt.
        source: the directory or model id loaded.
        sha256: hash of the pipeline's files (configs, tokenizer, weights, LoRA).
        lora: whether a LoRA adapter was loaded with the pipeline.
    """

    text2img: StableDiffusionPipeline
    img2img_pipeline: StableDiffusionImg2ImgPipeline
    inpaint_pipeline: StableDiffusionInpaintPipeline
    class_names: tuple[str, ...]
    prompts: PromptTemplates
    source: str
    sha256: str
    lora: bool = False

    @property
    def default_size(self) -> int:
        """Native image side of the pipeline in pixels (UNet sample size x VAE factor)."""
        return int(self.text2img.unet.config.sample_size * self.text2img.vae_scale_factor)

    @property
    def is_inpainting_unet(self) -> bool:
        """A 9-channel inpainting UNet: only ``inpaint`` can use it."""
        return int(self.text2img.unet.config.in_channels) == 9

    @property
    def modes(self) -> tuple[str, ...]:
        """The synthesis modes these weights serve: ``inpaint`` alone for an inpainting
        UNet (it takes the masked image and the mask as extra input channels), all
        three for a text-to-image base model."""
        return ("inpaint",) if self.is_inpainting_unet else ("inpaint", "img2img", "generate")

    def prompts_for(self, class_ids: np.ndarray, seeds: np.ndarray) -> list[str]:
        """The prompt of every requested image (recorded in provenance)."""
        return self.prompts.prompts_for(
            [self.class_names[int(c)] for c in class_ids], [int(s) for s in seeds]
        )

    def inpaint(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        class_ids: np.ndarray,
        seeds: np.ndarray,
        *,
        scheduler: str = "ddim",
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        batch_size: int = 4,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCallback | None = None,
    ) -> GenerationResult:
        """Paint ``class_ids[i]`` (as its prompt) into the mask of ``images[i]``.

        Images are uint8 (N, H, W, 3) (or 1 channel, replicated to RGB and averaged back)
        with H and W multiples of 8; masks uint8 (N, H, W), nonzero = paint. Unmasked
        pixels are returned unchanged.
        """
        params = SamplingParameters("inpaint", scheduler, num_inference_steps, guidance_scale)
        return self._sample(
            params, images, masks, class_ids, seeds, batch_size, progress, should_cancel
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
        guidance_scale: float = 7.5,
        batch_size: int = 4,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCallback | None = None,
    ) -> GenerationResult:
        """Re-synthesise ``images`` towards their class prompts; ``strength`` in (0, 1]."""
        params = SamplingParameters(
            "img2img", scheduler, num_inference_steps, guidance_scale, strength
        )
        return self._sample(
            params, images, None, class_ids, seeds, batch_size, progress, should_cancel
        )

    def generate(
        self,
        class_ids: np.ndarray,
        seeds: np.ndarray,
        *,
        scheduler: str = "ddim",
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        batch_size: int = 4,
        image_size: int | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCallback | None = None,
    ) -> GenerationResult:
        """Text-to-image from the class prompts at ``image_size`` (default: native size)."""
        params = SamplingParameters("generate", scheduler, num_inference_steps, guidance_scale)
        size = image_size or self.default_size
        return self._sample(
            params, None, None, class_ids, seeds, batch_size, progress, should_cancel, (size, size)
        )

    def _sample(
        self,
        params: SamplingParameters,
        images: np.ndarray | None,
        masks: np.ndarray | None,
        class_ids: np.ndarray,
        seeds: np.ndarray,
        batch_size: int,
        progress: ProgressCallback | None,
        should_cancel: CancelCallback | None,
        image_size: tuple[int, int] | None = None,
    ) -> GenerationResult:
        channels = 3
        if images is not None and np.asarray(images).ndim == 4:
            channels = int(np.asarray(images).shape[3])
        elif images is not None and np.asarray(images).ndim == 3:
            channels = 1
        if channels not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {channels}")
        images, masks, class_ids, seeds = check_request(
            params,
            images,
            masks,
            class_ids,
            seeds,
            num_classes=len(self.class_names),
            channels=channels,
            image_size=image_size,
            scheduler_names=SCHEDULER_NAMES,
            size_multiple=self.text2img.vae_scale_factor,
        )
        if params.mode not in self.modes:
            raise SamplingParameterError(
                f"this pretrained generator is an inpainting pipeline: it serves "
                f"{', '.join(self.modes)} only, not {params.mode}; ask for mode inpaint, or "
                f"register a text-to-image Stable Diffusion model for {params.mode}",
                field="mode",
            )
        pipeline = self._pipeline(params.mode)
        pipeline.scheduler = scheduler_from_config(
            params.scheduler, dict(self.text2img.scheduler.config)
        )
        prompts = self.prompts_for(class_ids, seeds)

        def run_batch(start: int, end: int) -> np.ndarray:
            kwargs: dict[str, Any] = {
                "prompt": prompts[start:end],
                "num_inference_steps": params.num_inference_steps,
                "guidance_scale": params.guidance_scale,
                "generator": [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:end]],
                "output_type": "np",
            }
            if self.prompts.negative_prompt is not None:
                kwargs["negative_prompt"] = [self.prompts.negative_prompt] * (end - start)
            height, width = images.shape[1:3]
            if params.mode == "generate":
                kwargs.update(height=height, width=width)
            else:
                kwargs["image"] = [_to_pil(image) for image in images[start:end]]
            if params.mode == "img2img":
                kwargs["strength"] = params.strength
            if params.mode == "inpaint":
                kwargs.update(
                    mask_image=[Image.fromarray(m) for m in masks[start:end]],
                    height=height,
                    width=width,
                )
            with torch.no_grad():
                output = pipeline(**kwargs).images
            pixels = (np.asarray(output) * 255.0).round().clip(0, 255).astype(np.uint8)
            if channels == 1:
                pixels = pixels.mean(axis=3, keepdims=True).round().astype(np.uint8)
            if params.mode == "inpaint":
                # The VAE round trip alters known pixels slightly: paste them back exactly.
                pixels = np.where(masks[start:end, ..., None] > 0, pixels, images[start:end])
            return pixels

        run = run_in_batches(
            len(seeds), batch_size, run_batch, progress=progress, should_cancel=should_cancel
        )
        shape = (0, *images.shape[1:])
        done = np.concatenate(run.results) if run.results else np.zeros(shape, np.uint8)
        return GenerationResult(
            done,
            class_ids[: run.completed],
            seeds[: run.completed],
            params,
            self.sha256,
            run.canceled,
            run.batch_size,
        )

    def _pipeline(self, mode: str) -> Any:
        return {
            "inpaint": self.inpaint_pipeline,
            "img2img": self.img2img_pipeline,
            "generate": self.text2img,
        }[mode]


def load_pretrained(
    source: str | Path,
    class_names: Sequence[str],
    *,
    weights_roots: Sequence[Path] | None,
    prompts: PromptTemplates | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> PretrainedGenerator:
    """Load a Stable Diffusion pipeline offline and derive the three modes from it.

    Args:
        source: a local diffusers pipeline directory, or a model id present in the local
            Hugging Face cache.
        class_names: class labels, turned into prompts by ``prompts``.
        weights_roots: the directories a path ``source`` must lie in (a tenant's request:
            pass the service's settings); ``None`` only for a trusted caller's own
            directory (a script, a test).
        prompts: prompt templates (default: dermoscopy, ISIC class names).
        device: torch device; default CUDA when available.
        dtype: weights dtype; default float16 on CUDA, float32 on CPU.

    Loaded pipelines are kept in a small per-process cache keyed by the directory's
    file listing (paths, sizes, modification times), device, dtype, classes and prompts,
    so a worker loads (and hashes) the weights once and reuses them across tasks.

    Raises:
        PretrainedWeightsError: not cached / not found offline, or not a diffusers
            Stable Diffusion pipeline.
    """
    directory = resolve_pipeline_directory(source, weights_roots)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    prompts = prompts or PromptTemplates()
    key = (
        _directory_fingerprint(directory),
        str(device),
        str(dtype),
        tuple(str(c) for c in class_names),
        repr(prompts),
    )
    if key in _PIPELINE_CACHE:
        _PIPELINE_CACHE.move_to_end(key)
        return _PIPELINE_CACHE[key]
    index = json.loads((directory / "model_index.json").read_text())
    pipeline_cls = (
        StableDiffusionInpaintPipeline
        if index.get("_class_name") == "StableDiffusionInpaintPipeline"
        else StableDiffusionPipeline
    )
    try:
        loaded = pipeline_cls.from_pretrained(
            directory,
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError, TypeError) as exc:
        raise PretrainedWeightsError(
            f"{source} could not be loaded as a Stable Diffusion pipeline: {exc}"
        ) from exc
    components = {
        name: loaded.components[name]
        for name in (
            "vae",
            "text_encoder",
            "tokenizer",
            "unet",
            "scheduler",
            "safety_checker",
            "feature_extractor",
        )
    }
    components["requires_safety_checker"] = False
    text2img = StableDiffusionPipeline(**components, image_encoder=None).to(device)
    lora = (directory / LORA_WEIGHTS_FILE).is_file()
    if lora:
        text2img.load_lora_weights(directory, weight_name=LORA_WEIGHTS_FILE)
    shared = {**text2img.components, "requires_safety_checker": False}
    img2img = StableDiffusionImg2ImgPipeline(**shared)
    inpaint = StableDiffusionInpaintPipeline(**shared)
    for pipeline in (text2img, img2img, inpaint):
        pipeline.set_progress_bar_config(disable=True)
    generator = PretrainedGenerator(
        text2img,
        img2img,
        inpaint,
        tuple(str(c) for c in class_names),
        prompts,
        str(source),
        pipeline_sha256(directory),
        lora,
    )
    _PIPELINE_CACHE[key] = generator
    while len(_PIPELINE_CACHE) > _CACHE_SIZE:
        _PIPELINE_CACHE.popitem(last=False)
    return generator


def clear_pipeline_cache() -> None:
    """Forget loaded pipelines (e.g. after fine-tuning one in place)."""
    _PIPELINE_CACHE.clear()


def _directory_fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap identity of a pipeline directory: (path, size, mtime_ns) of every file."""
    return tuple(
        (p.relative_to(directory).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    )


def resolve_pipeline_directory(source: str | Path, weights_roots: Sequence[Path] | None) -> Path:
    """The local directory of ``source``: inside ``weights_roots`` or a cached model id
    (see :func:`~services.generator.weights_source.resolve_source_directory`); with
    ``weights_roots=None``, any local directory (trusted callers only)."""
    if weights_roots is not None:
        try:
            directory = resolve_source_directory(str(source), weights_roots)
        except WeightsSourceRefused as exc:
            raise PretrainedWeightsError(str(exc)) from exc
        return _require_pipeline(directory)
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise PretrainedWeightsError(
                f"{source} is a file; expected a diffusers pipeline directory"
            )
        directory = path
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            directory = Path(snapshot_download(str(source), local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
            raise PretrainedWeightsError(
                f"{source!r} is neither a local directory nor a model id in the local "
                f"Hugging Face cache (downloads are disabled); copy the weights to a "
                f"directory and register that path"
            ) from exc
    return _require_pipeline(directory)


def _require_pipeline(directory: Path) -> Path:
    if not (directory / "model_index.json").is_file():
        raise PretrainedWeightsError(
            f"{directory} is not a diffusers pipeline directory (no model_index.json); "
            f"save the pipeline with save_pretrained()"
        )
    return directory


def pipeline_sha256(directory: Path) -> str:
    """sha256 over the relative paths and contents of the pipeline's files."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in _HASHED_SUFFIXES:
            digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LoraTrainingConfig:
    """Settings of a LoRA fine-tuning run.

    Attributes:
        rank: LoRA rank of the attention projections; ``alpha`` its scaling numerator.
        steps: optimiser steps; batch_size: images per step; learning_rate: AdamW lr.
        image_size: training side in pixels (multiple of the VAE factor); default native.
        seed: seeds the adapter init, batches and noise.
    """

    rank: int = 4
    alpha: int = 4
    steps: int = 100
    batch_size: int = 2
    learning_rate: float = 1e-4
    image_size: int | None = None
    seed: int = 0


def finetune_lora(
    generator: PretrainedGenerator,
    images: np.ndarray,
    class_ids: np.ndarray,
    output_dir: Path,
    *,
    config: LoraTrainingConfig | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> list[tuple[int, float]]:
    """Fine-tune a LoRA adapter on the UNet attention and save pipeline + adapter.

    ``output_dir`` receives the base pipeline (``save_pretrained``) and
    ``pytorch_lora_weights.safetensors``; :func:`load_pretrained` on it loads both.
    Images are uint8 (N, H, W, 3) (resized to ``image_size``); ``class_ids`` (N,) become
    prompts as in sampling. Returns the loss curve as (step, loss); a cancel stops early
    and still saves the adapter trained so far.
    """
    config = config or LoraTrainingConfig()
    pipe = generator.text2img
    if generator.lora:
        raise ValueError("this pipeline already carries a LoRA adapter; fine-tune its base")
    images = np.asarray(images)
    class_ids = np.asarray(class_ids)
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 1|3), got {images.dtype} {images.shape}")
    if class_ids.shape != (len(images),):
        raise ValueError(f"class_ids must have shape ({len(images)},), got {class_ids.shape}")
    size = config.image_size or generator.default_size
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(output_dir)  # base weights first, before the adapter exists

    torch.manual_seed(config.seed)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    device = unet.device
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            init_lora_weights="gaussian",
            target_modules=list(_LORA_TARGETS),
        )
    )
    trainable = [p for p in unet.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.data = parameter.data.float()  # adapters train in fp32 even on fp16 bases
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    rng = torch.Generator().manual_seed(config.seed)
    pixels = torch.from_numpy(
        np.stack([np.asarray(_to_pil(i).resize((size, size))) for i in images])
    ).permute(0, 3, 1, 2)
    pixels = pixels.float() / 127.5 - 1.0
    prompts = generator.prompts_for(class_ids, np.arange(len(class_ids)))
    curve: list[tuple[int, float]] = []
    unet.train()
    for step in range(1, config.steps + 1):
        if should_cancel is not None and should_cancel():
            break
        index = torch.randint(0, len(images), (config.batch_size,), generator=rng)
        batch = pixels[index].to(device, vae.dtype)
        with torch.no_grad():
            latents = vae.encode(batch).latent_dist.sample(rng) * vae.config.scaling_factor
            tokens = pipe.tokenizer(
                [prompts[i] for i in index.tolist()],
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            text = text_encoder(tokens.input_ids.to(device))[0]
        noise = torch.randn(latents.shape, generator=rng).to(device, latents.dtype)
        timesteps = torch.randint(
            0, noise_schedule.config.num_train_timesteps, (config.batch_size,), generator=rng
        ).to(device)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        target = (
            noise
            if noise_schedule.config.prediction_type == "epsilon"
            else noise_schedule.get_velocity(latents, noise, timesteps)
        )
        prediction = unet(noisy, timesteps, encoder_hidden_states=text).sample
        loss = F.mse_loss(prediction.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append((step, float(loss.detach())))
        if progress is not None:
            progress(step, config.steps)
    unet.eval()
    lora_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        output_dir,
        unet_lora_layers=lora_layers,
        weight_name=LORA_WEIGHTS_FILE,
        safe_serialization=True,
    )
    unet.delete_adapters(unet.active_adapters())  # leave the caller's pipeline as it was
    return curve


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return Image.fromarray(image).convert("RGB")
