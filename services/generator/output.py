"""Turning one generated image and how it was made into PNG bytes plus provenance.

The provenance dict is what the service records in its database and what the PNG carries
in ``tEXt`` chunks (via :func:`shared.imaging.encode_synthetic_png`, which also writes the
synthetic marker), so an image that leaves the system still says where it came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from services.generator.sampling import SamplingParameters
from shared.imaging import encode_synthetic_png

GENERATOR_NAME = "tailsynth-generator"


@dataclass(frozen=True)
class ImageOrigin:
    """Where one generated image came from, beyond the sampling parameters.

    Attributes:
        class_id: requested class id; ``class_name`` its name.
        seed: the image's own seed.
        checkpoint_sha256: generator checkpoint (or pretrained pipeline) sha256.
        source_image_id: id of the real image painted into (inpaint/img2img), else None.
        mask_id: id of the mask used (inpaint), else None.
        prompt: text prompt (pretrained text-conditioned pipelines), else None.
        job_id: the job that asked for the image, when known.
    """

    class_id: int
    class_name: str
    seed: int
    checkpoint_sha256: str
    source_image_id: str | None = None
    mask_id: str | None = None
    prompt: str | None = None
    job_id: str | None = None


def synthetic_image_record(
    pixels: np.ndarray, origin: ImageOrigin, parameters: SamplingParameters
) -> tuple[bytes, dict[str, str | int | float | None]]:
    """Encode one generated image as a marked PNG and return it with its provenance.

    Args:
        pixels: uint8 (H, W, C) with C in {1, 3}, or (H, W).
        origin: per-image facts (class, seed, source, mask, checkpoint...).
        parameters: how the batch was sampled.

    Returns:
        ``(png_bytes, provenance)``; ``provenance`` has JSON-serialisable values, and its
        string form is embedded in the PNG (``tailsynth:provenance`` plus one chunk per key).
    """
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    provenance: dict[str, str | int | float | None] = {
        "generator": GENERATOR_NAME,
        "mode": parameters.mode,
        "class_id": origin.class_id,
        "class_name": origin.class_name,
        "prompt": origin.prompt,
        "source_image_id": origin.source_image_id,
        "mask_id": origin.mask_id,
        "scheduler": parameters.scheduler,
        "num_inference_steps": parameters.num_inference_steps,
        "guidance_scale": parameters.guidance_scale,
        "strength": parameters.strength,
        "classifier_scale": parameters.classifier_scale,
        "seed": origin.seed,
        "checkpoint_sha256": origin.checkpoint_sha256,
        "job_id": origin.job_id,
    }
    text = {f"tailsynth:{key}": str(value) for key, value in provenance.items()
            if value is not None}
    text["tailsynth:provenance"] = json.dumps(provenance, sort_keys=True)
    return encode_synthetic_png(pixels, text), provenance
