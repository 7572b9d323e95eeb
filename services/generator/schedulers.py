"""Sampling schedulers by name, all diffusers classes built from one training schedule.

The names are the ones users type in a synthesis request and that provenance records.
Every scheduler here predicts with epsilon (the training target), shares the training
betas, and exposes ``alphas_cumprod`` (used by classifier guidance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (class, overrides of the shared config)
_SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {"clip_sample": False}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
}

SCHEDULER_NAMES: tuple[str, ...] = tuple(_SCHEDULERS)


def make_scheduler(name: str, num_train_timesteps: int, beta_schedule: str) -> SchedulerMixin:
    """A fresh scheduler ``name`` for a model trained with the given DDPM schedule.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    base = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
    return scheduler_from_config(name, {**base.config, "prediction_type": "epsilon"})


def scheduler_from_config(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """Scheduler ``name`` sharing ``base_config`` (betas, prediction type...) of another one,
    e.g. the scheduler a pretrained pipeline was saved with."""
    if name not in _SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    cls, overrides = _SCHEDULERS[name]
    scheduler: SchedulerMixin = cls.from_config({**base_config, **overrides})
    return scheduler
