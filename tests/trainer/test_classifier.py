"""Training, scoring, checkpoints and pretrained loading with tiny timm models on CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from services.trainer.classifier import (
    ClassifierConfig,
    ImageClassifier,
    TrainingCanceled,
    _build_loss,
    build_model,
    read_checkpoint_metadata,
    train_classifier,
)
from tests.trainer.images import CLASS_NAMES, bright_squares_gray, coloured_squares

Split = tuple[np.ndarray, np.ndarray]


def tiny_config(**overrides: object) -> ClassifierConfig:
    values: dict[str, object] = {
        "backbone": "test_resnet",
        "image_size": 16,
        "epochs": 3,
        "batch_size": 16,
        "lr": 3e-3,
        "seed": 0,
        "device": "cpu",
    }
    values.update(overrides)
    return ClassifierConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(train_set: Split, val_set: Split) -> ImageClassifier:
    images, labels = train_set
    val_images, val_labels = val_set
    return train_classifier(
        images, labels, CLASS_NAMES, tiny_config(), val_images=val_images, val_labels=val_labels
    )


def test_training_learns_coloured_squares_well_above_chance(
    trained: ImageClassifier, val_set: Split
) -> None:
    val_images, val_labels = val_set
    accuracy = float(np.mean(trained.predict(val_images) == val_labels))
    assert accuracy >= 0.9  # chance is 1/3
    history = trained.history
    assert [record.epoch for record in history.epochs] == [1, 2, 3]
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    assert history.best_epoch in (1, 2, 3)
    best = history.epochs[history.best_epoch - 1].val_balanced_accuracy
    assert best == max(record.val_balanced_accuracy or 0.0 for record in history.epochs)
    assert set(history.epochs[-1].val_per_class_recall or {}) == set(CLASS_NAMES)
    assert set(history.epochs[-1].train_per_class_accuracy) == set(CLASS_NAMES)
    assert history.train_images == 96 and history.images_per_second > 0


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_vit"])
def test_other_backbone_families_train_and_score(backbone: str, train_set: Split) -> None:
    images, labels = train_set
    classifier = train_classifier(
        images[:48], labels[:48], CLASS_NAMES, tiny_config(backbone=backbone, epochs=1)
    )
    features, logits = classifier.features_and_logits(images[:5])
    assert features.shape == (5, classifier.feature_dim)
    assert logits.shape == (5, 3)


def test_scoring_outputs_agree_with_the_model_and_each_other(
    trained: ImageClassifier, val_set: Split
) -> None:
    images = val_set[0][:10]
    features, logits = trained.features_and_logits(images)
    assert features.shape == (10, trained.model.num_features) == (10, 96)
    assert features.dtype == np.float32 and logits.dtype == np.float32
    np.testing.assert_allclose(trained.logits(images), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(trained.features(images), features, rtol=1e-5, atol=1e-5)

    # Same numbers as timm's full forward pass on identically prepared input.
    from services.trainer.data import prepare_batch

    with torch.inference_mode():
        direct = trained.model(trained._normalise(prepare_batch(images, 16, 3))).numpy()
    np.testing.assert_allclose(logits, direct, rtol=1e-4, atol=1e-5)

    probabilities = trained.predict_proba(images)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), trained.predict(images))


def test_inference_batching_does_not_change_results(
    trained: ImageClassifier, val_set: Split
) -> None:
    images = val_set[0][:11]
    whole = trained.logits(images)
    trained.config.inference_batch_size = 4  # 3 batches: 4 + 4 + 3
    try:
        batched = trained.logits(images)
        streamed = [
            logits for _, logits in trained.iter_features_and_logits([images[:6], images[6:]])
        ]
    finally:
        trained.config.inference_batch_size = 256
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(streamed), whole, rtol=1e-5, atol=1e-5)
    assert trained.logits(images[:0]).shape == (0, 3)


def test_mixed_size_images_are_resampled_before_scoring(trained: ImageClassifier) -> None:
    images, _ = coloured_squares(2, seed=5, size=32)
    wide = np.repeat(images[0], 2, axis=1)  # 32 x 64, a different aspect
    logits = trained.logits([images[1], wide])
    assert logits.shape == (2, 3)


def test_save_load_round_trip_gives_identical_logits(
    trained: ImageClassifier, val_set: Split, tmp_path: Path
) -> None:
    path = tmp_path / "models" / "classifier.safetensors"
    digest = trained.save(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "classifier.safetensors",
        "classifier.safetensors.sha256",  # checked by load
    ]

    metadata = read_checkpoint_metadata(path)
    assert metadata["class_names"] == CLASS_NAMES
    assert metadata["config"]["backbone"] == "test_resnet"
    assert len(metadata["history"]["epochs"]) == 3

    loaded = ImageClassifier.load(path)
    assert loaded.class_names == CLASS_NAMES
    assert loaded.config == trained.config
    assert loaded.history.best_epoch == trained.history.best_epoch
    np.testing.assert_array_equal(loaded.logits(val_set[0]), trained.logits(val_set[0]))


def test_training_is_reproducible_for_a_seed(train_set: Split) -> None:
    images, labels = train_set
    config = tiny_config(epochs=1, balanced_sampling=True)
    first = train_classifier(images[:48], labels[:48], CLASS_NAMES, config)
    second = train_classifier(images[:48], labels[:48], CLASS_NAMES, config)
    other_seed = tiny_config(epochs=1, balanced_sampling=True, seed=1)
    other = train_classifier(images[:48], labels[:48], CLASS_NAMES, other_seed)
    np.testing.assert_array_equal(first.logits(images[:8]), second.logits(images[:8]))
    assert not np.allclose(first.logits(images[:8]), other.logits(images[:8]))


def test_pretrained_path_loads_a_timm_checkpoint_and_replaces_the_head(tmp_path: Path) -> None:
    # A timm training-script checkpoint of the same architecture, for a 5-class task.
    source = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    checkpoint = tmp_path / "pretrained.pth.tar"
    torch.save({"epoch": 3, "state_dict": source.state_dict()}, checkpoint)

    model = build_model(tiny_config(pretrained_path=str(checkpoint)), num_classes=3)
    loaded, original = model.state_dict(), source.state_dict()
    backbone_keys = [key for key in original if not key.startswith("fc.")]
    assert backbone_keys
    for key in backbone_keys:
        torch.testing.assert_close(loaded[key], original[key])
    assert loaded["fc.weight"].shape == (3, source.num_features)  # new head for 3 classes

    # The same checkpoint adapted to a grayscale stem: timm sums the RGB filters.
    gray = build_model(tiny_config(pretrained_path=str(checkpoint), in_chans=1), num_classes=3)
    torch.testing.assert_close(
        gray.state_dict()["conv1.0.weight"], original["conv1.0.weight"].sum(dim=1, keepdim=True)
    )


def test_pretrained_path_accepts_a_saved_classifier_safetensors(
    trained: ImageClassifier, train_set: Split, tmp_path: Path
) -> None:
    path = tmp_path / "real_only.safetensors"
    trained.save(path)
    # Same head size: every weight, head included, comes from the file.
    same = build_model(tiny_config(pretrained_path=str(path)), num_classes=3)
    for key, value in safetensors.torch.load_file(str(path)).items():
        torch.testing.assert_close(same.state_dict()[key], value)
    # Fine-tuning from it starts where the real-only classifier ended.
    images, labels = train_set
    tuned = train_classifier(
        images[:32],
        labels[:32],
        CLASS_NAMES,
        tiny_config(pretrained_path=str(path), epochs=1, lr=1e-4),
    )
    agreement = np.mean(tuned.predict(images) == trained.predict(images))
    assert agreement > 0.9
    with pytest.raises(FileNotFoundError):
        build_model(tiny_config(pretrained_path=str(tmp_path / "missing.pth")), num_classes=3)


def test_grayscale_images_train_with_one_input_channel() -> None:
    images, labels = bright_squares_gray(48, seed=0)
    val_images, val_labels = bright_squares_gray(24, seed=1)
    classifier = train_classifier(
        images, labels, ["normal", "pneumonia"], tiny_config(in_chans=1, epochs=2)
    )
    assert classifier.model.state_dict()["conv1.0.weight"].shape[1] == 1
    assert float(np.mean(classifier.predict(val_images) == val_labels)) >= 0.9
    assert classifier.features(val_images[:, :, :, None]).shape == (24, 96)  # (H, W, 1) too


def test_cancel_stops_training_promptly_with_the_finished_history(train_set: Split) -> None:
    images, labels = train_set
    polls: list[int] = []
    steps: list[tuple[int, int]] = []

    def should_cancel() -> bool:
        polls.append(1)
        return len(polls) > 8  # 96 images / 16 = 6 steps per epoch: stop mid-epoch 2

    with pytest.raises(TrainingCanceled) as raised:
        train_classifier(
            images,
            labels,
            CLASS_NAMES,
            tiny_config(),
            progress=lambda done, total: steps.append((done, total)),
            should_cancel=should_cancel,
        )
    assert steps[-1] == (8, 18)  # no step after the cancel was seen
    assert [record.epoch for record in raised.value.history.epochs] == [1]


def test_progress_reports_every_step_up_to_the_total(train_set: Split) -> None:
    images, labels = train_set
    steps: list[tuple[int, int]] = []
    train_classifier(
        images[:40],
        labels[:40],
        CLASS_NAMES,
        tiny_config(epochs=2),
        progress=lambda done, total: steps.append((done, total)),
    )
    # 40 images in batches of 16 -> 3 steps per epoch (16 + 16 + 8).
    assert steps == [(step, 6) for step in range(1, 7)]


def test_losses_weighted_and_focal() -> None:
    labels = np.array([0] * 6 + [1] * 2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    cpu = torch.device("cpu")

    weighted = _build_loss(tiny_config(loss="weighted_ce"), labels, 2, cpu)(logits, targets)
    # Balanced weights n / (K * n_c): 8 / 12 for class 0, 8 / 4 for class 1.
    expected = torch.nn.functional.cross_entropy(
        logits, targets, weight=torch.tensor([8 / 12, 2.0])
    )
    torch.testing.assert_close(weighted, expected)

    plain = _build_loss(tiny_config(), labels, 2, cpu)(logits, targets)
    focal_gamma0 = _build_loss(tiny_config(loss="focal", focal_gamma=0.0), labels, 2, cpu)
    torch.testing.assert_close(focal_gamma0(logits, targets), plain)
    focal = _build_loss(tiny_config(loss="focal"), labels, 2, cpu)(logits, targets)
    assert float(focal) < float(plain)  # confident, correct images are down-weighted

    with pytest.raises(ValueError):
        tiny_config(loss="ldam")


def test_logit_adjusted_and_balanced_softmax_losses_add_the_log_prior() -> None:
    cpu = torch.device("cpu")
    labels = np.array([0] * 12 + [1] * 4)
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]])
    targets = torch.tensor([0, 1, 1])
    prior = torch.tensor([12 / 16, 4 / 16])
    for tau in (1.0, 2.0):
        adjusted = _build_loss(
            tiny_config(loss="logit_adjusted", logit_adjust_tau=tau), labels, 2, cpu
        )
        expected = torch.nn.functional.cross_entropy(logits + tau * prior.log(), targets)
        torch.testing.assert_close(adjusted(logits, targets), expected)
    balanced = _build_loss(tiny_config(loss="balanced_softmax"), labels, 2, cpu)
    expected = torch.nn.functional.cross_entropy(logits + torch.tensor([12.0, 4.0]).log(), targets)
    torch.testing.assert_close(balanced(logits, targets), expected)
    # At tau = 1 the two differ by a constant offset, which softmax ignores.
    tau1 = _build_loss(tiny_config(loss="logit_adjusted"), labels, 2, cpu)
    torch.testing.assert_close(tau1(logits, targets), balanced(logits, targets))
    with pytest.raises(ValueError):
        tiny_config(loss="logit_adjusted", logit_adjust_tau=0.0)


def test_min_train_steps_raises_the_epoch_count_of_a_small_set(train_set: Split) -> None:
    images, labels = train_set  # 96 images, batch 16: 6 steps per epoch
    classifier = train_classifier(
        images, labels, CLASS_NAMES, tiny_config(epochs=1, min_train_steps=20)
    )
    assert len(classifier.history.epochs) == 4  # ceil(20 / 6)
    unchanged = train_classifier(
        images[:32], labels[:32], CLASS_NAMES, tiny_config(epochs=2, min_train_steps=3)
    )
    assert len(unchanged.history.epochs) == 2


def test_bad_training_inputs_are_refused(train_set: Split) -> None:
    images, labels = train_set
    with pytest.raises(ValueError):
        train_classifier(images, labels[:-1], CLASS_NAMES, tiny_config())
    with pytest.raises(ValueError):
        train_classifier(images, labels + 5, CLASS_NAMES, tiny_config())
    with pytest.raises(ValueError):
        train_classifier(images, labels, CLASS_NAMES, tiny_config(), val_images=images)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(
    trained: ImageClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "classifier.safetensors"
    first_digest = trained.save(path)

    def interrupted_replace(source: str, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("services.trainer.classifier.os.replace", interrupted_replace)
    with pytest.raises(OSError, match="disk full"):
        trained.save(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first_digest
    assert [p.name for p in tmp_path.iterdir()] == ["classifier.safetensors"]  # no temp left


def test_guidance_module_matches_scoring_and_passes_gradients(
    trained: ImageClassifier, val_set: Split
) -> None:
    images, _ = val_set
    module = trained.guidance_module()
    pixels = torch.from_numpy(images[:4]).permute(0, 3, 1, 2).float().div(255.0)
    pixels.requires_grad_(True)
    logits = module(pixels)  # resampled from 24 px to the classifier's 16 px in torch
    assert logits.shape == (4, 3)
    assert (logits.argmax(dim=1).numpy() == trained.predict(images[:4])).mean() >= 0.75
    logits[:, 0].sum().backward()
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0
