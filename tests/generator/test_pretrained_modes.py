"""A pretrained *inpainting* pipeline (a 9-channel UNet) serves inpaint only: asked for
img2img or generate it is a user error naming the mode (422 at the request, since its
modes are recorded when it is registered; the job's error for a request that got past),
never "internal error: ValueError"."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel
from sqlalchemy import func, select

from services.generator.pretrained import PretrainedGenerator, load_pretrained
from services.generator.sampling import SamplingParameterError
from services.generator.service import register_pretrained_job
from shared.errors import InvalidInput
from shared.jobs import JobContext
from shared.models import Generator, Job
from shared.runtime import Runtime
from tests.conftest import ApiHarness
from tests.fixtures.pipelines import save_tiny_pipeline
from tests.fixtures.rows import add_rows, ready_dataset, ready_generator, tenant_id
from tests.generator.conftest import disc_mask

SIZE = 32
CLASSES = ("MEL", "NV")


def save_tiny_inpainting_pipeline(root: Path) -> Path:
    """The tiny text-to-image pipeline with its UNet widened to the 9 input channels of
    an inpainting model (latents, mask, masked-image latents), saved as one."""
    base = StableDiffusionPipeline.from_pretrained(save_tiny_pipeline(root, SIZE))
    unet = UNet2DConditionModel.from_config({**base.unet.config, "in_channels": 9})
    pipe = StableDiffusionInpaintPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(root / "inpainting")
    return root / "inpainting"


@pytest.fixture(scope="module")
def inpainting(tmp_path_factory: pytest.TempPathFactory) -> PretrainedGenerator:
    directory = save_tiny_inpainting_pipeline(tmp_path_factory.mktemp("tiny-sd-inpaint"))
    return load_pretrained(directory, CLASSES, weights_roots=None, device="cpu")


def test_an_inpainting_pipeline_serves_inpaint_and_refuses_the_rest_by_name(
    inpainting: PretrainedGenerator,
) -> None:
    assert inpainting.is_inpainting_unet and inpainting.modes == ("inpaint",)
    images = np.full((1, SIZE, SIZE, 3), 180, dtype=np.uint8)
    classes, seeds = np.array([0]), np.array([1])
    result = inpainting.inpaint(
        images, disc_mask(SIZE, 8)[None], classes, seeds, num_inference_steps=2
    )
    assert result.images.shape == (1, SIZE, SIZE, 3)
    with pytest.raises(SamplingParameterError) as refused:
        inpainting.img2img(images, classes, 0.5, seeds, num_inference_steps=2)
    assert isinstance(refused.value, InvalidInput) and refused.value.extra["field"] == "mode"
    assert "serves inpaint only, not img2img" in refused.value.detail
    with pytest.raises(SamplingParameterError, match="not generate"):
        inpainting.generate(classes, seeds, num_inference_steps=2)


def _synthesis(api: ApiHarness, dataset_id: str, generator_id: str, mode: str) -> Any:
    return api.client.post(
        "/v1/synthesis",
        json={"dataset_id": dataset_id, "generator_id": generator_id, "mode": mode,
              "counts": {"MEL": 2}},
    )  # fmt: skip


def test_img2img_with_an_inpainting_pipeline_is_a_422_on_mode_before_any_job(
    local_api: ApiHarness, tmp_path: Path
) -> None:
    dataset_id = ready_dataset(local_api, {"MEL": 6, "NV": 6})
    weights_root = tmp_path / "weights"
    weights_root.mkdir()
    directory = save_tiny_inpainting_pipeline(weights_root)
    generator_id = uuid.uuid4()
    add_rows(
        local_api,
        Generator(
            id=generator_id,
            tenant_id=tenant_id(local_api),
            dataset_id=uuid.UUID(dataset_id),
            kind="pretrained",
            state="registering",
            source=str(directory),
            config={"modality": "dermoscopy"},
        ),
    )
    # The registration job loads the weights and records the modes they serve.
    runtime = Runtime(local_api.settings.model_copy(update={"weights_roots": (weights_root,)}))
    ctx = SimpleNamespace(params={"generator_id": str(generator_id)}, progress=lambda *_: None)
    register_pretrained_job(cast(JobContext, ctx), runtime)
    registered = local_api.client.get(f"/v1/generators/{generator_id}").json()
    assert registered["state"] == "ready" and registered["config"]["modes"] == ["inpaint"]

    jobs = int(local_api.rows(select(func.count()).select_from(Job))[0][0])
    for mode in ("img2img", "generate"):
        response = _synthesis(local_api, dataset_id, str(generator_id), mode)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["field"] == "mode" and f"serves inpaint only, not {mode}" in body["detail"]
    assert int(local_api.rows(select(func.count()).select_from(Job))[0][0]) == jobs
    accepted = _synthesis(local_api, dataset_id, str(generator_id), "inpaint")
    assert accepted.status_code == 202, accepted.text
    # Registered before modes were recorded: every mode is accepted as before (the
    # worker's refusal above then names the mode in the job's error).
    older = ready_generator(local_api, dataset_id, {"default_size": SIZE}, kind="pretrained")
    response = _synthesis(local_api, dataset_id, older, "img2img")
    assert response.status_code == 202, response.text
