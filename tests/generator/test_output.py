from __future__ import annotations

import json

import numpy as np
import pytest

from services.generator.output import ImageOrigin, synthetic_image_record
from services.generator.sampling import SamplingParameters
from shared.imaging import SYNTHETIC_KEY, decode_image, read_png_text


def test_generated_image_becomes_a_marked_png_with_full_provenance() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    origin = ImageOrigin(class_id=2, class_name="DF", seed=1234, checkpoint_sha256="ab" * 32,
                         source_image_id="img-7", mask_id="mask-7", job_id="job-1")
    params = SamplingParameters("inpaint", "ddim", 25, 3.0)
    png, provenance = synthetic_image_record(pixels, origin, params)
    np.testing.assert_array_equal(decode_image(png).pixels, pixels)
    text = read_png_text(png)
    assert text[SYNTHETIC_KEY] == "true"
    assert json.loads(text["tailsynth:provenance"]) == provenance
    assert text["tailsynth:seed"] == "1234" and text["tailsynth:scheduler"] == "ddim"
    assert provenance["mode"] == "inpaint" and provenance["strength"] == 1.0
    assert provenance["source_image_id"] == "img-7" and provenance["mask_id"] == "mask-7"
    assert provenance["checkpoint_sha256"] == "ab" * 32 and provenance["guidance_scale"] == 3.0
    assert "tailsynth:prompt" not in text  # absent values are not written as "None"


def test_grayscale_images_are_encoded_single_channel() -> None:
    pixels = np.full((8, 8, 1), 100, np.uint8)
    png, _ = synthetic_image_record(pixels, ImageOrigin(0, "normal", 1, "0" * 64),
                                    SamplingParameters("generate", "ddim", 2, 1.0))
    assert decode_image(png).pixels.shape == (8, 8)
    with pytest.raises(ValueError, match="uint8"):
        synthetic_image_record(pixels.astype(np.float32), ImageOrigin(0, "n", 1, "0" * 64),
                               SamplingParameters("generate", "ddim", 2, 1.0))
