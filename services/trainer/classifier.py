"""timm image classifiers shared by the trainer, the OOD filter and the generator's quality probe.

- :func:`train_classifier` fits any timm backbone on uint8 images with integer labels
  (plain, class-weighted or focal loss; optional class-balanced re-sampling) and keeps a
  per-epoch history, including per-class accuracy for IOIS accuracy-adaptive sampling.
- :class:`ImageClassifier` scores images in bounded-memory batches: logits,
  probabilities and penultimate (pre-logits) features, the latter two in one forward
  pass for the OOD filter.
- Checkpoints are one ``.safetensors`` file whose header carries the config, class
  names and history as JSON, written atomically; the same file is a valid
  ``pretrained_path`` for a later run, loaded through timm's own pretrained loader.

Nothing here touches the database, Celery or object storage: inputs are numpy arrays
and paths, progress and cancellation are callbacks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from sklearn.utils.class_weight import compute_class_weight
from timm.models import get_pretrained_cfg_value
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader

from services.trainer.data import (
    ImageSet,
    LabelledImageDataset,
    build_augmentation,
    build_train_sampler,
    image_count,
    prepare_batch,
)
from services.trainer.metrics import classification_report
from shared.integrity import SHA256_SUFFIX

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]
LossName = Literal["ce", "weighted_ce", "focal", "logit_adjusted", "balanced_softmax"]
LOSS_NAMES: tuple[str, ...] = ("ce", "weighted_ce", "focal", "logit_adjusted", "balanced_softmax")

CHECKPOINT_FORMAT = "tailsynth.classifier/1"
_METADATA_KEY = "tailsynth.classifier"


class TimmClassifierModel(Protocol):
    """The part of timm's classification-model interface this module relies on."""

    num_classes: int
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def get_classifier(self) -> nn.Module: ...


class TrainingCanceled(Exception):
    """``should_cancel`` returned True; ``history`` holds the epochs finished before it."""

    def __init__(self, history: TrainingHistory) -> None:
        super().__init__(f"training canceled after {len(history.epochs)} finished epoch(s)")
        self.history = history


@dataclass
class ClassifierConfig:
    """Everything that defines a classifier run; stored inside every checkpoint.

    Attributes:
        backbone: any timm model name, built with ``pretrained=False`` (no hub).
        image_size: side in pixels that every image is resampled to (square, no crop).
        in_chans: 1 for grayscale modalities (chest X-ray), 3 for RGB.
        epochs: full passes over the training set (>= 1).
        batch_size: training images per optimizer step.
        lr: peak AdamW learning rate, reached after ``warmup_epochs`` and then cosine-decayed
            to ``lr * min_lr_ratio``.
        weight_decay: AdamW decoupled weight decay (not applied to norms and biases).
        seed: seeds weight init, shuffling, sampling and augmentation.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
        balanced_sampling: draw every class equally often (re-sampling baseline).
        loss: "ce"; "weighted_ce" (class weights n / (K * n_c), the re-weighting baseline);
            "focal" (focal loss with ``focal_gamma``); "logit_adjusted" (Menon et al. 2021,
            the loss form: cross-entropy on logits + tau * log(prior), prior = training
            label frequencies, tau = ``logit_adjust_tau``); "balanced_softmax" (Ren et al.
            2020: cross-entropy on logits + log(n_c)). Both adjust the loss only: the
            model's raw logits are its predictions. At tau = 1 the two coincide (log n_c
            and log prior differ by a constant, which softmax ignores).
        logit_adjust_tau: tau of the logit-adjusted loss (> 0).
        min_train_steps: a floor on optimizer steps: the epoch count is raised until
            ``epochs * batches per epoch`` reaches it, so a small dataset is not trained
            for a few dozen steps and called a classifier (0 = no floor).
        label_smoothing: in [0, 1), applied by every loss.
        augment: random resized crop (75-100 % area) and horizontal flip while training.
        vertical_flip: add vertical flips to the augmentation (dermoscopy yes, X-ray no).
        pretrained_path: local timm checkpoint (.pth/.pth.tar, raw or with a
            ``state_dict``/``state_dict_ema`` entry) or .safetensors file of the same
            architecture. Loaded by timm's pretrained loader: the classifier head is
            re-initialised when the class count differs, the stem adapted to ``in_chans``.
        drop_rate: dropout before the classifier head.
        drop_path_rate: stochastic depth, for backbones that support it (0 disables).
        keep_best: with validation data, return the weights of the epoch with the best
            validation balanced accuracy instead of the last epoch's.
        mixed_precision: bf16 autocast, used on CUDA only (CPU always runs float32).
        inference_batch_size: images per forward pass when scoring; bounds memory.
        num_workers: DataLoader worker processes for training (0 = in-process).
    """

    backbone: str = "resnet18"
    image_size: int = 64
    in_chans: int = 3
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    device: str = "auto"
    balanced_sampling: bool = False
    loss: LossName = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    logit_adjust_tau: float = 1.0
    min_train_steps: int = 0
    augment: bool = True
    vertical_flip: bool = False
    pretrained_path: str | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01
    keep_best: bool = True
    mixed_precision: bool = True
    inference_batch_size: int = 256
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if self.epochs < 1 or self.batch_size < 1 or self.inference_batch_size < 1:
            raise ValueError("epochs, batch_size and inference_batch_size must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)}; got {self.loss!r}")
        if self.logit_adjust_tau <= 0 or self.min_train_steps < 0:
            raise ValueError("logit_adjust_tau must be positive and min_train_steps >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_epochs must be >= 0 and min_lr_ratio in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassifierConfig:
        """Build from a dict such as a stored checkpoint's; unknown keys are ignored so a
        checkpoint written by a newer version still loads."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class EpochRecord:
    """One finished epoch. Losses are means per training image; accuracies in [0, 1].

    ``train_per_class_accuracy`` is measured on the (augmented) training batches as they
    were trained on; ``val_*`` fields are None without validation data.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    train_per_class_accuracy: dict[str, float]
    learning_rate: float
    seconds: float
    val_accuracy: float | None = None
    val_balanced_accuracy: float | None = None
    val_per_class_recall: dict[str, float] | None = None


@dataclass
class TrainingHistory:
    """Per-epoch record of a training run; ``best_epoch`` is the epoch whose weights were kept."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    train_images: int = 0
    images_per_second: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingHistory:
        return cls(
            epochs=[EpochRecord(**record) for record in values.get("epochs", [])],
            best_epoch=values.get("best_epoch"),
            train_images=values.get("train_images", 0),
            images_per_second=values.get("images_per_second", 0.0),
        )


def resolve_device(device: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_model(config: ClassifierConfig, num_classes: int) -> nn.Module:
    """A timm model for ``config``, randomly initialised or from ``config.pretrained_path``.

    Never touches a model hub: ``pretrained=True`` is only used with a local ``file`` in
    ``pretrained_cfg_overlay``, so timm's own loader reads it (head re-initialised when
    the stored class count differs, stem adapted when its channels differ).
    """
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "in_chans": config.in_chans,
        "drop_rate": config.drop_rate,
    }
    if config.drop_path_rate > 0:
        kwargs["drop_path_rate"] = config.drop_path_rate
    # Backbones with learned position embeddings (ViT) are built for one input size.
    if get_pretrained_cfg_value(config.backbone, "fixed_input_size"):
        kwargs["img_size"] = config.image_size

    if config.pretrained_path is None:
        return timm.create_model(config.backbone, pretrained=False, **kwargs)

    path = Path(config.pretrained_path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_path {path} is not a file")
    verify_sha256_sidecar(path)  # an earlier round's classifier carries one
    stored_classes, stored_chans = _checkpoint_head_and_stem(config.backbone, path)
    overlay: dict[str, Any] = {"file": str(path), "num_classes": stored_classes}
    if stored_chans is not None:
        overlay["input_size"] = (stored_chans, config.image_size, config.image_size)
    return timm.create_model(
        config.backbone, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
    )


def _checkpoint_head_and_stem(backbone: str, path: Path) -> tuple[int, int | None]:
    """Class count and input channels stored in a checkpoint, which timm's loader needs
    to know to decide whether to drop the head and adapt the stem."""
    state_dict = timm.models.load_state_dict(str(path))
    classifier = get_pretrained_cfg_value(backbone, "classifier") or "fc"
    first_conv = get_pretrained_cfg_value(backbone, "first_conv")
    head_names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    head_weight = state_dict.get(f"{head_names[0]}.weight")
    if head_weight is None:
        raise ValueError(f"{path} has no '{head_names[0]}.weight': not a {backbone} checkpoint")
    stem_chans = None
    if isinstance(first_conv, str) and f"{first_conv}.weight" in state_dict:
        stem_chans = int(state_dict[f"{first_conv}.weight"].shape[1])
    return int(head_weight.shape[0]), stem_chans


class ImageClassifier:
    """A trained timm classifier with its config and class names, ready to score images.

    Scoring methods take an :data:`~services.trainer.data.ImageSet` — uint8
    (N, H, W, C) / (N, H, W) arrays or a sequence of (H, W[, C]) images of any size —
    resample to ``config.image_size``, and run ``config.inference_batch_size`` images
    per forward pass under ``torch.inference_mode`` with the model in eval mode, so
    results are deterministic and peak memory does not grow with N (only the (N, K)
    or (N, D) outputs do). For streams too large for memory, use
    :meth:`iter_features_and_logits` with an iterable of batches.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ClassifierConfig,
        class_names: Sequence[str],
        history: TrainingHistory | None = None,
    ) -> None:
        if len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-way model")
        self.model = model.eval()
        self.config = config
        self.class_names = [str(name) for name in class_names]
        self.history = history or TrainingHistory()
        self.device = next(model.parameters()).device
        mean, std = _normalisation(model, config.in_chans)
        self._mean = mean.to(self.device)
        self._std = std.to(self.device)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_dim(self) -> int:
        """D, the width of :meth:`features` (timm's ``num_features`` pre-logits width)."""
        timm_model = cast(TimmClassifierModel, self.model)
        return int(getattr(timm_model, "head_hidden_size", None) or timm_model.num_features)

    def logits(self, images: ImageSet) -> np.ndarray:
        """Raw class scores, float32, shape (N, K) in ``class_names`` order."""
        return self.features_and_logits(images)[1]

    def predict_proba(self, images: ImageSet) -> np.ndarray:
        """Softmax probabilities, float32, shape (N, K); rows sum to 1."""
        logits = torch.from_numpy(self.logits(images))
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, images: ImageSet) -> np.ndarray:
        """Most likely class index per image, int64, shape (N,)."""
        return self.logits(images).argmax(axis=1).astype(np.int64)

    def features(self, images: ImageSet) -> np.ndarray:
        """Penultimate (pre-logits) features, float32, shape (N, D) with D = ``feature_dim``."""
        return self.features_and_logits(images)[0]

    def features_and_logits(self, images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, D) and logits (N, K), float32, from one forward pass per batch."""
        count = image_count(images)
        step = self.config.inference_batch_size
        batches = (images[start : start + step] for start in range(0, count, step))
        parts = list(self.iter_features_and_logits(batches))
        if not parts:
            return (
                np.zeros((0, self.feature_dim), dtype=np.float32),
                np.zeros((0, self.num_classes), dtype=np.float32),
            )
        return (
            np.concatenate([features for features, _ in parts]),
            np.concatenate([logits for _, logits in parts]),
        )

    def iter_features_and_logits(
        self, batches: Iterable[ImageSet]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream (features (B, D), logits (B, K)) per input batch, e.g. read from storage.

        Each input batch is scored as given, so the caller's batch size bounds memory.
        """
        self.model.eval()
        for batch in batches:
            if image_count(batch) == 0:
                continue
            pixels = prepare_batch(batch, self.config.image_size, self.config.in_chans)
            with torch.inference_mode(), self._autocast():
                features, logits = self._features_and_logits(self._normalise(pixels))
            yield features.float().cpu().numpy(), logits.float().cpu().numpy()

    def save(self, path: Path) -> str:
        """Write weights, config, class names and history to ``path`` (.safetensors), atomically,
        with its sha256 in the sidecar ``path + ".sha256"`` that :meth:`load` checks.

        The file appears complete or not at all (temporary file in the same directory,
        fsync, ``os.replace``). The JSON metadata lives in the safetensors header, so
        one object holds everything and :func:`read_checkpoint_metadata` reads it
        without loading weights.

        Returns:
            sha256 (hex) of the written file, for provenance records (and the storage
            sidecar, :func:`shared.storage.put_file_with_sha256`).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "class_names": self.class_names,
            "history": self.history.to_dict(),
            "timm_version": timm.__version__,
            "torch_version": torch.__version__,
        }
        tensors = {
            name: tensor.detach().to("cpu").contiguous()
            for name, tensor in self.model.state_dict().items()
        }
        payload = safetensors.torch.save(tensors, metadata={_METADATA_KEY: json.dumps(metadata)})
        sha256 = hashlib.sha256(payload).hexdigest()
        # A sidecar of an earlier file at this path goes first: a process killed between
        # the two renames leaves a file without a sidecar, never one with a wrong one.
        sha256_sidecar(path).unlink(missing_ok=True)
        _write_atomically(path, payload)
        write_sha256_sidecar(path, sha256)
        return sha256

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> ImageClassifier:
        """Rebuild a classifier written by :meth:`save` on ``device`` ("auto" allowed).

        Raises:
            ValueError: the file does not match its ``.sha256`` sidecar (a file without
                one, written before sidecars existed, is loaded as it is).
        """
        verify_sha256_sidecar(path)
        metadata = read_checkpoint_metadata(path)
        config = ClassifierConfig.from_dict(metadata["config"])
        class_names = metadata["class_names"]
        # The weights come from this file; the original pretrained_path is history.
        model = build_model(
            ClassifierConfig.from_dict({**metadata["config"], "pretrained_path": None}),
            len(class_names),
        )
        model.load_state_dict(safetensors.torch.load_file(str(path)), strict=True)
        model.to(resolve_device(device))
        history = TrainingHistory.from_dict(metadata.get("history", {}))
        return cls(model, config, class_names, history)

    def guidance_module(self) -> nn.Module:
        """A differentiable module mapping float (B, C, H, W) images in [0, 1] (any size) to
        (B, K) logits, for classifier guidance of a diffusion sampler (IOIS)."""
        return _UnitPixelClassifier(self.model, self._mean, self._std, self.config.image_size)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, S, S) -> float32 normalised with the backbone's mean/std, on device."""
        scaled = pixels.to(self.device, non_blocking=True).float().div_(255.0)
        return (scaled - self._mean) / self._std

    def _features_and_logits(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        timm_model = cast(TimmClassifierModel, self.model)
        feature_map = timm_model.forward_features(inputs)
        features = timm_model.forward_head(feature_map, pre_logits=True)
        return features, timm_model.get_classifier()(features)

    def _autocast(self) -> torch.autocast:
        return _autocast(self.device, self.config.mixed_precision)


class _UnitPixelClassifier(nn.Module):
    """A trained classifier on [0, 1] float pixels: resampled and normalised in torch, so
    gradients reach the input."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor, size: int) -> None:
        super().__init__()
        self.model = model.eval()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.size = size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-1] != self.size or pixels.shape[-2] != self.size:
            pixels = F.interpolate(
                pixels, size=(self.size, self.size), mode="bilinear", align_corners=False
            )
        logits: torch.Tensor = self.model((pixels - self.mean) / self.std)
        return logits


def sha256_sidecar(path: Path) -> Path:
    """The sidecar holding the sha256 (hex) of the classifier file ``path``, named like
    the storage sidecars (:data:`shared.storage.SHA256_SUFFIX`)."""
    path = Path(path)
    return path.with_name(path.name + SHA256_SUFFIX)


def write_sha256_sidecar(path: Path, sha256: str) -> None:
    """Record ``sha256`` as the expected hash of ``path`` (e.g. after a verified download)."""
    _write_atomically(sha256_sidecar(path), sha256.encode())


def verify_sha256_sidecar(path: Path) -> str | None:
    """Check ``path`` against its sidecar; the sha256, or None when it has no sidecar.

    Raises:
        ValueError: the file's sha256 differs from the sidecar's (a torn or altered file).
    """
    sidecar = sha256_sidecar(path)
    if not sidecar.is_file():
        return None
    expected = sidecar.read_text().strip()
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ValueError(
            f"classifier {Path(path).name} is corrupt: sha256 {digest.hexdigest()} != {expected}"
        )
    return expected


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path``, complete or not at all (a ``.tmp-`` file beside it, fsync,
    ``os.replace``; scratch sweeps delete the ``.tmp-`` files killed writers leave)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The JSON stored by :meth:`ImageClassifier.save` (format, config, class_names, history)."""
    with safe_open(str(path), framework="pt") as handle:
        stored = (handle.metadata() or {}).get(_METADATA_KEY)
    if stored is None:
        raise ValueError(f"{path} is not a tailsynth classifier checkpoint")
    metadata: dict[str, Any] = json.loads(stored)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has unsupported checkpoint format {metadata.get('format')!r}")
    return metadata


def train_classifier(
    train_images: ImageSet,
    train_labels: np.ndarray,
    class_names: Sequence[str],
    config: ClassifierConfig,
    *,
    val_images: ImageSet | None = None,
    val_labels: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> ImageClassifier:
    """Fit a timm classifier on labelled uint8 images and return it with its history.

    Args:
        train_images: uint8 (N, H, W[, C]) array or sequence of (H, W[, C]) images.
        train_labels: int class indices in [0, K), shape (N,).
        class_names: K names; index k of a label or logit is ``class_names[k]``.
        config: the run's settings (seeded, explicit device).
        val_images, val_labels: optional validation split (never the test split), scored
            after every epoch; drives ``keep_best`` and gives per-class recall for AAS.
        sample_weights: optional non-negative per-sample draw weights, shape (N,).
        progress: called as ``progress(done_steps, total_steps)`` after every optimizer
            step (total = epochs * batches per epoch); callers throttle their own writes.
        should_cancel: polled before every step; when it returns True, training stops
            and :class:`TrainingCanceled` is raised with the finished epochs' history.

    Returns:
        An :class:`ImageClassifier` on ``config.device`` with ``history`` filled in.
    """
    labels = np.asarray(train_labels, dtype=np.int64)
    num_classes = len(class_names)
    _check_split(train_images, labels, num_classes, "train")
    if (val_images is None) != (val_labels is None):
        raise ValueError("give both val_images and val_labels, or neither")
    val_labels_array = None
    if val_images is not None and val_labels is not None:
        val_labels_array = np.asarray(val_labels, dtype=np.int64)
        _check_split(val_images, val_labels_array, num_classes, "validation")

    _seed_everything(config.seed)
    device = resolve_device(config.device)
    model = build_model(config, num_classes).to(device)
    classifier = ImageClassifier(model, config, class_names)

    augmentation = (
        build_augmentation(config.image_size, vertical_flip=config.vertical_flip)
        if config.augment
        else None
    )
    dataset = LabelledImageDataset(
        train_images,
        labels,
        image_size=config.image_size,
        in_chans=config.in_chans,
        augmentation=augmentation,
    )
    sampler = build_train_sampler(
        labels,
        num_classes,
        balanced=config.balanced_sampling,
        sample_weights=sample_weights,
        seed=config.seed,
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(config.seed),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        # BatchNorm cannot train on a batch of one image; drop such a straggler only.
        drop_last=len(dataset) % config.batch_size == 1 and len(dataset) > 1,
    )
    steps_per_epoch = len(loader)
    epochs = max(config.epochs, -(-config.min_train_steps // steps_per_epoch))
    total_steps = epochs * steps_per_epoch

    optimizer = create_optimizer_v2(
        model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total_steps,
        lr_min=config.lr * config.min_lr_ratio,
        warmup_t=int(config.warmup_epochs * steps_per_epoch),
        warmup_lr_init=config.lr * config.min_lr_ratio,
        t_in_epochs=False,
    )
    loss_fn = _build_loss(config, labels, num_classes, device)

    history = TrainingHistory(train_images=len(labels))
    best_score = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    step = 0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        loss_sum = 0.0
        seen = np.zeros(num_classes, dtype=np.int64)
        correct = np.zeros(num_classes, dtype=np.int64)
        for pixels, targets in loader:
            if should_cancel is not None and should_cancel():
                raise TrainingCanceled(history)
            targets = targets.to(device, non_blocking=True)
            with _autocast(device, config.mixed_precision):
                logits = model(classifier._normalise(pixels))
            loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)

            loss_sum += float(loss.detach()) * len(targets)
            batch_labels = targets.cpu().numpy()
            hits = (logits.detach().argmax(dim=1).cpu().numpy() == batch_labels).astype(np.int64)
            np.add.at(seen, batch_labels, 1)
            np.add.at(correct, batch_labels, hits)
            if progress is not None:
                progress(step, total_steps)

        record = EpochRecord(
            epoch=epoch,
            train_loss=loss_sum / max(1, int(seen.sum())),
            train_accuracy=float(correct.sum() / max(1, int(seen.sum()))),
            train_per_class_accuracy={
                name: float(correct[k] / seen[k])
                for k, name in enumerate(classifier.class_names)
                if seen[k] > 0
            },
            learning_rate=float(optimizer.param_groups[0]["lr"]),
            seconds=time.perf_counter() - epoch_started,
        )
        if val_images is not None and val_labels_array is not None:
            report = classification_report(
                val_labels_array, classifier.predict(val_images), classifier.class_names
            )
            record.val_accuracy = report.accuracy
            record.val_balanced_accuracy = report.balanced_accuracy
            record.val_per_class_recall = {
                item.name: item.recall for item in report.per_class if item.support > 0
            }
            if config.keep_best and report.balanced_accuracy > best_score:
                best_score = report.balanced_accuracy
                best_state = copy.deepcopy(model.state_dict())
                history.best_epoch = epoch
        history.epochs.append(record)
        logger.info(
            "epoch %d/%d loss %.4f train acc %.3f val bal acc %s",
            epoch,
            epochs,
            record.train_loss,
            record.train_accuracy,
            record.val_balanced_accuracy,
        )

    elapsed = time.perf_counter() - started
    history.images_per_second = epochs * len(dataset) / elapsed if elapsed > 0 else 0.0
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        history.best_epoch = epochs
    classifier.model.eval()
    classifier.history = history
    return classifier


def _build_loss(
    config: ClassifierConfig, labels: np.ndarray, num_classes: int, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss as ``loss(logits (B, K) float32, targets (B,) int64) -> scalar``."""
    weight = None
    if config.loss == "weighted_ce":
        # scikit-learn's "balanced" weights n / (K * n_c); classes absent from training
        # never appear as targets, so their weight is irrelevant and left at 1.
        present = np.unique(labels)
        class_weight = np.ones(num_classes, dtype=np.float32)
        class_weight[present] = compute_class_weight("balanced", classes=present, y=labels)
        weight = torch.from_numpy(class_weight).to(device)
    logit_offset = None
    if config.loss in ("logit_adjusted", "balanced_softmax"):
        # A class absent from training never is a target; count it once so log stays finite.
        counts = np.maximum(np.bincount(labels, minlength=num_classes), 1).astype(np.float64)
        offset = (
            config.logit_adjust_tau * np.log(counts / counts.sum())
            if config.loss == "logit_adjusted"
            else np.log(counts)
        )
        logit_offset = torch.from_numpy(offset.astype(np.float32)).to(device)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if config.loss == "focal":
            # Focal loss (Lin et al., 2017): down-weight images the model already gets
            # right, with p_t the unsmoothed probability of the true class.
            per_image = F.cross_entropy(
                logits, targets, reduction="none", label_smoothing=config.label_smoothing
            )
            p_true = torch.softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]
            return ((1.0 - p_true) ** config.focal_gamma * per_image).mean()
        if logit_offset is not None:
            logits = logits + logit_offset
        return F.cross_entropy(
            logits, targets, weight=weight, label_smoothing=config.label_smoothing
        )

    return loss


def _normalisation(model: nn.Module, in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std, shape (1, in_chans, 1, 1), from timm's data config for ``model``."""
    data_config = timm.data.resolve_model_data_config(model)
    mean = torch.tensor(data_config["mean"], dtype=torch.float32)
    std = torch.tensor(data_config["std"], dtype=torch.float32)
    if in_chans == 1 and mean.numel() != 1:
        # timm adapts an RGB stem to one channel by summing its filters, i.e. it treats
        # gray as R = G = B; the matching normalisation is the channel average.
        mean, std = mean.mean().reshape(1), std.mean().reshape(1)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


def _autocast(device: torch.device, mixed_precision: bool) -> torch.autocast:
    # bf16 autocast only on CUDA: CPU runs stay float32 so they are exact and portable.
    return torch.autocast(
        device_type=device.type,
        dtype=torch.bfloat16,
        enabled=mixed_precision and device.type == "cuda",
    )


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False


def _check_split(images: ImageSet, labels: np.ndarray, num_classes: int, split: str) -> None:
    if num_classes < 2:
        raise ValueError("a classifier needs at least two classes")
    if labels.ndim != 1 or image_count(images) != len(labels):
        raise ValueError(
            f"{split}: {image_count(images)} images but labels of shape {labels.shape}"
        )
    if len(labels) == 0:
        raise ValueError(f"{split}: no images")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{split}: labels must lie in [0, {num_classes})")
