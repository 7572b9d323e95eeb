"""Atomic, self-describing generator checkpoints.

Layout of one checkpoint, ``<checkpoint_dir>/checkpoint-<step:08d>/``::

    generator_config.json   the GeneratorConfig (JSON)
    unet/                   EMA weights, diffusers ``save_pretrained`` layout (sampled from)
    vae/                    latent mode only
    training_state.pt       raw weights, EMA, optimiser, LR scheduler, step, RNG, loss curve
    manifest.json           step, sha256 of every file, and the checkpoint sha256

A checkpoint is written into a hidden temporary directory beside its final place and
renamed into place only when complete (``os.replace`` of a directory is atomic on one
filesystem), so a process killed mid-write never leaves a half checkpoint under a name
that :func:`latest_checkpoint` would pick. ``manifest.json`` is written last, inside the
temporary directory, so its presence also marks completeness.

A checkpoint copied from elsewhere (storage, another host) is installed the same way by
:func:`install_checkpoint`: filled into a hidden staging directory, every file checked
against the manifest's sha256, then renamed into place; a killed or corrupt copy never
looks complete. :func:`checkpoint_name` is the one place the directory (and storage key)
name of a step is spelled.

The checkpoint sha256 identifies *what is sampled from*: it hashes the config and the
inference weights (``unet/``, ``vae/``), not the optimiser state, so two checkpoints that
generate the same images share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DModel

from services.generator.config import GeneratorConfig

CONFIG_FILE = "generator_config.json"
MANIFEST_FILE = "manifest.json"
TRAINING_STATE_FILE = "training_state.pt"
_PREFIX = "checkpoint-"
_INFERENCE_PARTS = (CONFIG_FILE, "unet", "vae")


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint of ``step``, locally and in storage."""
    return f"{_PREFIX}{step:08d}"


def checkpoint_step(name: str) -> int | None:
    """The step a checkpoint directory ``name`` holds, or ``None`` if it names none."""
    digits = name.removeprefix(_PREFIX)
    if digits == name or not digits.isdigit() or checkpoint_name(int(digits)) != name:
        return None
    return int(digits)


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint lives, its training step and its sha256 (hex)."""

    path: Path
    step: int
    sha256: str


def write_checkpoint(
    checkpoint_dir: Path,
    *,
    step: int,
    config: GeneratorConfig,
    inference_unet: UNet2DModel,
    vae: AutoencoderKL | None,
    training_state: dict[str, Any],
) -> CheckpointInfo:
    """Write a complete checkpoint for ``step`` atomically and return its info.

    ``inference_unet`` must already hold the weights to sample from (the EMA weights).
    An existing checkpoint of the same step is replaced.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / checkpoint_name(step)
    staging = checkpoint_dir / f".tmp-{final.name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        config.to_json(staging / CONFIG_FILE)
        inference_unet.save_pretrained(staging / "unet")
        if vae is not None:
            vae.save_pretrained(staging / "vae")
        torch.save(training_state, staging / TRAINING_STATE_FILE)
        files = {rel: _sha256_file(staging / rel) for rel in _relative_files(staging)}
        manifest: dict[str, Any] = {
            "step": step,
            "files": files,
            "sha256": _inference_sha256(files),
        }
        _fsync_write(staging / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True))
        _move_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CheckpointInfo(path=final, step=step, sha256=manifest["sha256"])


def install_checkpoint(final: Path, fill: Callable[[Path], None]) -> CheckpointInfo:
    """Install a checkpoint copied from elsewhere at ``final``, verified and atomically.

    ``fill(staging)`` writes the checkpoint's files (manifest included) into an empty
    staging directory beside ``final`` (e.g. by downloading them). Every file is then
    checked against the manifest's sha256 and the whole directory renamed into place; a
    copy that is killed, short or corrupt is deleted and never appears at ``final``.

    Raises:
        ValueError: the copy has no manifest, misses a file, a sha256 differs, or its
            step is not the one ``final`` names.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        fill(staging)
        sha256 = verify_checkpoint(staging)
        step = int(read_manifest(staging)["step"])
        if checkpoint_step(final.name) not in (None, step):
            raise ValueError(f"{final.name} holds a checkpoint of step {step}")
        _move_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CheckpointInfo(path=final, step=step, sha256=sha256)


def list_checkpoints(checkpoint_dir: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under ``checkpoint_dir``, oldest step first."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        if path.name.startswith(_PREFIX) and (path / MANIFEST_FILE).is_file():
            manifest = read_manifest(path)
            found.append(
                CheckpointInfo(
                    path=path, step=int(manifest["step"]), sha256=str(manifest["sha256"])
                )
            )
    return sorted(found, key=lambda info: info.step)


def latest_checkpoint(checkpoint_dir: Path) -> CheckpointInfo | None:
    """The complete checkpoint with the highest step, or ``None``."""
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1] if checkpoints else None


def retained_steps(steps: Iterable[int], keep: int, protect: Iterable[int] = ()) -> set[int]:
    """The steps a retention policy keeps: the ``keep`` newest of ``steps`` (``keep`` >= 1)
    and every one of ``protect`` among them (e.g. the checkpoint a generator samples from).

    Training records no validation metric per checkpoint (its loss curve is the loss of
    single noisy batches), so there is no "best" checkpoint to keep apart from these.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    ordered = sorted(set(steps))
    return set(ordered[-keep:]) | (set(ordered) & set(protect))


def prune_checkpoints(checkpoint_dir: Path, keep: int, protect: Iterable[int] = ()) -> list[int]:
    """Delete the complete checkpoints that :func:`retained_steps` does not keep; the
    deleted steps. The manifest goes first, so a checkpoint whose deletion is cut short
    is no longer listed as complete."""
    checkpoints = list_checkpoints(checkpoint_dir)
    kept = retained_steps((c.step for c in checkpoints), keep, protect)
    deleted = []
    for info in checkpoints:
        if info.step not in kept:
            (info.path / MANIFEST_FILE).unlink(missing_ok=True)
            shutil.rmtree(info.path, ignore_errors=True)
            deleted.append(info.step)
    return deleted


def read_manifest(checkpoint_path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((checkpoint_path / MANIFEST_FILE).read_text())
    return manifest


def verify_checkpoint(checkpoint_path: Path) -> str:
    """Recompute every file hash; return the sha256 or raise ``ValueError`` if the
    manifest is missing or unreadable, a file is missing, or a hash differs."""
    try:
        manifest = read_manifest(checkpoint_path)
        files: dict[str, str] = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{checkpoint_path.name} has no readable manifest: {exc}") from exc
    for rel, expected in files.items():
        try:
            actual = _sha256_file(checkpoint_path / rel)
        except OSError as exc:
            raise ValueError(f"checkpoint file {rel} is missing") from exc
        if actual != expected:
            raise ValueError(f"checkpoint file {rel} is corrupt: sha256 {actual} != {expected}")
    if _inference_sha256(files) != manifest.get("sha256"):
        raise ValueError(f"{checkpoint_path.name}: manifest sha256 does not match its files")
    return str(manifest["sha256"])


def load_training_state(checkpoint_path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(
        checkpoint_path / TRAINING_STATE_FILE, map_location="cpu", weights_only=True
    )
    return state


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename a complete ``staging`` directory to ``final``, replacing what is there."""
    if final.exists():
        # Rename the old one aside first: os.replace cannot overwrite a non-empty dir.
        retired = final.parent / f".old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)


def _relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _inference_sha256(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(files):
        if rel.split("/", 1)[0] in _INFERENCE_PARTS:
            digest.update(f"{rel}\0{files[rel]}\n".encode())
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_write(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
