"""Pretrained-weights path with a tiny Stable Diffusion built from configs (no hub)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from services.generator.pretrained import (
    LoraTrainingConfig,
    PretrainedGenerator,
    PretrainedWeightsError,
    finetune_lora,
    load_pretrained,
)
from services.generator.prompts import PromptTemplates
from tests.fixtures.pipelines import save_tiny_pipeline
from tests.generator.conftest import disc_mask

SIZE = 32
CLASSES = ("MEL", "DF")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"), SIZE)


@pytest.fixture(scope="module")
def pretrained(pipeline_dir: Path) -> PretrainedGenerator:
    return load_pretrained(pipeline_dir, CLASSES, weights_roots=[pipeline_dir.parent],
                           device="cpu")


def _images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(120, 220, (2, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.stack([disc_mask(SIZE, 9), disc_mask(SIZE, 6)])
    return images, masks


def test_three_modes_share_components_and_return_images(pretrained: PretrainedGenerator) -> None:
    assert load_pretrained(pretrained.source, CLASSES, weights_roots=None,
                           device="cpu") is pretrained  # cached
    assert pretrained.inpaint_pipeline.unet is pretrained.text2img.unet
    assert pretrained.img2img_pipeline.vae is pretrained.text2img.vae
    images, masks = _images()
    ids, seeds = np.array([0, 1]), np.array([5, 6])
    painted = pretrained.inpaint(images, masks, ids, seeds, num_inference_steps=2)
    varied = pretrained.img2img(images, ids, 0.6, seeds, num_inference_steps=2)
    fresh = pretrained.generate(ids, seeds, num_inference_steps=2, scheduler="euler")
    for result in (painted, varied, fresh):
        assert result.images.shape == (2, SIZE, SIZE, 3) and result.images.dtype == np.uint8
        assert result.checkpoint_sha256 == pretrained.sha256
    np.testing.assert_array_equal(painted.images[masks == 0], images[masks == 0])
    assert not np.array_equal(painted.images[masks > 0], images[masks > 0])
    again = pretrained.generate(ids[:1], seeds[:1], num_inference_steps=2, scheduler="euler")
    assert np.abs(again.images[0].astype(int) - fresh.images[0]).max() <= 1


def test_prompts_name_the_class_and_a_seeded_attribute() -> None:
    templates = PromptTemplates(attributes={"DF": ["on the arm", "on the leg"]})
    assert templates.prompt("MEL") == "a dermoscopic image of melanoma"
    prompts = templates.prompts_for(["DF", "DF", "MEL"], [1, 1, 2])
    assert prompts[0] == prompts[1] and prompts[0].startswith("a dermoscopic image of "
                                                              "dermatofibroma, on the ")
    xray = PromptTemplates.for_modality("chest_xray", class_descriptions={})
    assert xray.prompt("pneumonia", "frontal view") == ("a chest x-ray of a child with "
                                                        "pneumonia, frontal view")


def test_unknown_sources_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="not a diffusers pipeline directory"):
        load_pretrained(tmp_path, CLASSES, weights_roots=[tmp_path], device="cpu")
    with pytest.raises(PretrainedWeightsError, match="model id .* offline Hugging Face cache"):
        load_pretrained("tailsynth-test/not-a-cached-model", CLASSES,
                        weights_roots=[tmp_path], device="cpu")


def test_a_pipeline_outside_the_weights_roots_is_refused(
    pipeline_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(PretrainedWeightsError, match="neither a directory under the weights"):
        load_pretrained(pipeline_dir, CLASSES, weights_roots=[tmp_path], device="cpu")


def test_only_safetensors_weights_are_loaded(pipeline_dir: Path, tmp_path: Path) -> None:
    """A pickled (.bin) component could run code when loaded: it is not read at all."""
    pickled = tmp_path / "pickled"
    shutil.copytree(pipeline_dir, pickled)
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(safetensors.torch.load_file(str(weights)), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(PretrainedWeightsError, match="could not be loaded"):
        load_pretrained(pickled, CLASSES, weights_roots=[tmp_path], device="cpu")


def test_invalid_requests_raise(pretrained: PretrainedGenerator) -> None:
    images, masks = _images()
    with pytest.raises(ValueError, match="unknown class id 2"):
        pretrained.inpaint(images, masks, np.array([0, 2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="multiples of 2"):
        pretrained.img2img(images[:, :31, :31], np.array([0, 1]), 0.5, np.array([1, 2]))


def test_lora_finetune_is_saved_with_the_pipeline_and_changes_outputs(
    pretrained: PretrainedGenerator, tmp_path: Path
) -> None:
    images, _ = _images()
    curve = finetune_lora(pretrained, images, np.array([0, 1]), tmp_path / "tuned",
                          config=LoraTrainingConfig(steps=3, rank=2, alpha=2,
                                                    learning_rate=5e-2))
    assert [step for step, _ in curve] == [1, 2, 3]
    assert (tmp_path / "tuned/pytorch_lora_weights.safetensors").is_file()
    tuned = load_pretrained(tmp_path / "tuned", CLASSES, weights_roots=[tmp_path],
                            device="cpu")
    assert tuned.lora and tuned.sha256 != pretrained.sha256
    base = pretrained.generate(np.array([0]), np.array([3]), num_inference_steps=2)
    adapted = tuned.generate(np.array([0]), np.array([3]), num_inference_steps=2)
    assert not np.array_equal(base.images, adapted.images)
