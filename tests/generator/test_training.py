from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.generator import checkpoint as checkpoint_module
from services.generator.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    verify_checkpoint,
)
from services.generator.sampling import load_generator
from services.generator.training import (
    TrainingData,
    _draw_batch,
    class_balanced_weights,
    dihedral_augment,
    drop_class_labels,
    train_generator,
)
from tests.generator.conftest import CLASS_NAMES, SIZE, make_dataset, tiny_config


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_holds_config_weights_state_and_hashes(trained_checkpoint: Path) -> None:
    names = {p.relative_to(trained_checkpoint).as_posix()
             for p in trained_checkpoint.rglob("*") if p.is_file()}
    assert {"generator_config.json", "manifest.json", "training_state.pt", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors"} <= names
    manifest = json.loads((trained_checkpoint / "manifest.json").read_text())
    assert manifest["step"] == 4 and len(manifest["sha256"]) == 64
    assert verify_checkpoint(trained_checkpoint) == manifest["sha256"]
    config = json.loads((trained_checkpoint / "generator_config.json").read_text())
    assert config["class_names"] == list(CLASS_NAMES)
    unet_config = json.loads((trained_checkpoint / "unet/config.json").read_text())
    assert unet_config["in_channels"] == 7 and unet_config["out_channels"] == 3
    assert unet_config["num_class_embeds"] == 4  # three classes + the null class
    # keep_checkpoints=2: steps 2 and 4 stay, nothing half-written is listed
    assert [c.step for c in list_checkpoints(trained_checkpoint.parent)] == [2, 4]


def test_corrupted_checkpoint_is_detected(tmp_path: Path) -> None:
    images, masks, labels = make_dataset()
    result = train_generator(images, masks, labels, CLASS_NAMES,
                             tiny_config(max_train_steps=1), tmp_path, device="cpu")
    assert result.checkpoint is not None
    weights = result.checkpoint.path / "unet/diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="corrupt"):
        verify_checkpoint(result.checkpoint.path)


def test_canceled_run_resumes_at_the_right_step_with_identical_state(tmp_path: Path) -> None:
    images, masks, labels = make_dataset()
    config = tiny_config(max_train_steps=5, checkpoint_every=100, keep_checkpoints=3)
    straight = train_generator(images, masks, labels, CLASS_NAMES, config, tmp_path / "a",
                               device="cpu")

    polls = []

    def cancel_after_two() -> bool:
        polls.append(1)
        return len(polls) >= 2

    stopped = train_generator(images, masks, labels, CLASS_NAMES, config, tmp_path / "b",
                              device="cpu", should_cancel=cancel_after_two)
    assert stopped.status == "canceled" and stopped.step == 2
    assert stopped.checkpoint is not None and stopped.checkpoint.step == 2

    steps_seen: list[int] = []
    resumed = train_generator(images, masks, labels, CLASS_NAMES, config, tmp_path / "b",
                              device="cpu", progress=lambda done, total: steps_seen.append(done))
    assert resumed.status == "completed" and resumed.resumed_from_step == 2
    assert steps_seen == [3, 4, 5]
    assert resumed.loss_curve == straight.loss_curve
    assert [s for s, _ in resumed.loss_curve] == [1, 2, 3, 4, 5]
    assert straight.checkpoint is not None and resumed.checkpoint is not None
    assert resumed.checkpoint.sha256 == straight.checkpoint.sha256  # same EMA weights
    a = load_training_state(straight.checkpoint.path)
    b = load_training_state(resumed.checkpoint.path)
    assert _states_equal(a["unet"], b["unet"])
    assert torch.equal(a["rng"], b["rng"])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


def test_resume_refuses_a_different_architecture(tmp_path: Path) -> None:
    images, masks, labels = make_dataset()
    train_generator(images, masks, labels, CLASS_NAMES, tiny_config(max_train_steps=1),
                    tmp_path, device="cpu")
    with pytest.raises(ValueError, match="different config.*block_out_channels"):
        train_generator(images, masks, labels, CLASS_NAMES,
                        tiny_config(max_train_steps=2, block_out_channels=(16, 16)), tmp_path,
                        device="cpu")


def test_interrupted_checkpoint_write_leaves_no_visible_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, masks, labels = make_dataset()
    config = tiny_config(max_train_steps=2, checkpoint_every=1)
    real_save = torch.save
    calls = []

    def dying_save(obj: object, path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint dies half-way through being written
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt("killed")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_generator(images, masks, labels, CLASS_NAMES, config, tmp_path, device="cpu")
    # Only the complete step-1 checkpoint is visible; the staging dir is gone.
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000001"]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.step == 1
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    resumed = train_generator(images, masks, labels, CLASS_NAMES, config, tmp_path, device="cpu")
    assert resumed.resumed_from_step == 1 and resumed.step == 2


def test_staging_directories_are_never_picked_as_latest(tmp_path: Path) -> None:
    (tmp_path / ".tmp-checkpoint-00000009-1").mkdir()
    (tmp_path / "checkpoint-00000010").mkdir()  # no manifest: incomplete
    assert latest_checkpoint(tmp_path) is None


def test_grayscale_training_and_sampling(tmp_path: Path) -> None:
    images, masks, labels = make_dataset(channels=1)
    config = tiny_config(channels=1, max_train_steps=2)
    result = train_generator(images[..., 0], masks, labels, CLASS_NAMES, config, tmp_path,
                             device="cpu")
    assert result.checkpoint is not None
    generator = load_generator(result.checkpoint.path, device="cpu")
    out = generator.inpaint(images[:2], masks[:2], labels[:2], np.array([1, 2]),
                            num_inference_steps=2)
    assert out.images.shape == (2, SIZE, SIZE, 1)


def test_latent_variant_trains_and_samples_through_the_vae(tmp_path: Path) -> None:
    images, masks, labels = make_dataset()
    config = tiny_config(latent=True, vae_block_out_channels=(8, 16), latent_channels=4,
                         max_train_steps=2)
    result = train_generator(images, masks, labels, CLASS_NAMES, config, tmp_path, device="cpu")
    assert result.checkpoint is not None
    assert (result.checkpoint.path / "vae/config.json").is_file()
    generator = load_generator(result.checkpoint.path, device="cpu")
    assert generator.unet.config.in_channels == 9 and generator.unet.config.sample_size == 8
    out = generator.inpaint(images[:2], masks[:2], labels[:2], np.array([1, 2]),
                            num_inference_steps=2)
    keep = masks[:2] == 0
    np.testing.assert_array_equal(out.images[keep], images[:2][keep])


def test_images_of_another_size_are_resized_and_auto_masked(tmp_path: Path) -> None:
    images, _, labels = make_dataset()
    bigger = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 32 px
    result = train_generator(bigger, None, labels, CLASS_NAMES, tiny_config(max_train_steps=1),
                             tmp_path, device="cpu")
    assert result.status == "completed" and np.isfinite(result.loss_curve[0][1])


def test_class_balanced_weights_even_out_class_frequencies() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    balanced = class_balanced_weights(labels, 1.0)
    shares = [float(balanced[labels == c].sum() / balanced.sum()) for c in (0, 1)]
    assert shares == pytest.approx([0.5, 0.5])
    natural = class_balanced_weights(labels, 0.0)
    assert float(natural[labels == 1].sum() / natural.sum()) == pytest.approx(0.1)
    sqrt = class_balanced_weights(labels, 0.5)
    assert float(sqrt[labels == 1].sum() / sqrt.sum()) == pytest.approx(
        np.sqrt(10) / (np.sqrt(10) + np.sqrt(90)))


def test_class_dropout_uses_the_null_class() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    dropped = torch.tensor([True, False, True, False])
    assert drop_class_labels(labels, dropped, 3).tolist() == [3, 1, 3, 1]


def test_invalid_training_inputs_raise(tmp_path: Path) -> None:
    images, masks, labels = make_dataset()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        train_generator(images, masks, labels + 1, CLASS_NAMES, tiny_config(), tmp_path)
    with pytest.raises(ValueError, match="masks must have shape"):
        train_generator(images, masks[:, :8], labels, CLASS_NAMES, tiny_config(), tmp_path)
    with pytest.raises(ValueError, match="2 class names"):
        train_generator(images, masks, labels, CLASS_NAMES[:2], tiny_config(), tmp_path)


def _asymmetric(size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 2, S, S) sample no symmetry of the square maps to itself, and its mask."""
    sample = torch.arange(2 * size * size, dtype=torch.float32).view(1, 2, size, size)
    return sample, (sample[:, :1] % 3 == 0).float()


def _dihedral_images(sample: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of a (C, S, S) tensor under flips and quarter turns."""
    return [torch.rot90(s, k, dims=(-2, -1)) for s in (sample, sample.flip(-1)) for k in range(4)]


def test_dermoscopy_augmentation_draws_every_flip_and_quarter_turn_with_its_mask() -> None:
    sample, mask = _asymmetric()
    samples, masks = sample.repeat(64, 1, 1, 1), mask.repeat(64, 1, 1, 1)
    out, out_masks = dihedral_augment(samples, masks, torch.Generator().manual_seed(0))
    images, mask_images = _dihedral_images(sample[0]), _dihedral_images(mask[0])
    drawn = []
    for augmented, augmented_mask in zip(out, out_masks, strict=True):
        which = [i for i, image in enumerate(images) if torch.equal(augmented, image)]
        assert len(which) == 1  # exactly one symmetry of the source
        assert torch.equal(augmented_mask, mask_images[which[0]])  # the mask turned alike
        drawn.append(which[0])
    assert sorted(set(drawn)) == list(range(8))


@pytest.mark.parametrize("augment", ["none", "dermoscopy"])
def test_a_chest_x_ray_batch_is_never_flipped(augment: str) -> None:
    sample, mask = _asymmetric(16)
    data = TrainingData(sample[:, :1], mask, torch.tensor([0]), torch.tensor([1.0]))
    config = tiny_config(channels=1, batch_size=32, augment=augment)
    batch = _draw_batch(data, config, torch.Generator().manual_seed(0))
    unchanged = [torch.equal(s, sample[0, :1]) for s in batch.samples]
    if augment == "none":  # laterality kept: the heart stays on the patient's left
        assert all(unchanged) and torch.equal(batch.masks, mask.repeat(32, 1, 1, 1))
    else:
        assert 0 < sum(unchanged) < 32
