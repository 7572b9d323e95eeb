"""Sampling schedulers by name, all diffusers classes built from one training schedule.

The names are the ones users type in a synthesis request and that provenance records.
Every scheduler here predicts with epsilon (the training target), shares the training
betas, and exposes ``alphas_cumprod`` (used by classifier guidance).

The last step of every scheduler lands on alpha_bar = 1, so no predicted noise is left
in the image: DDIM's ``set_alpha_to_one`` is True by default, PNDM's is not (it would
end on alpha_bar[0] < 1), so it is set here; the others end on sigma = 0.

Timesteps stay spaced ``"leading"`` (diffusers' default), not ``"trailing"`` as Lin et
al. ("Common Diffusion Noise Schedules and Sample Steps are Flawed", 2023) recommend for
schedules with zero terminal SNR: they pair it with v-prediction, and these generators
predict epsilon on the cosine schedule, whose last timestep has alpha_bar ~ 2e-9. There
an x0 estimate is (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar): an error of 1 % in
the predicted noise becomes ~200 in x0, and with "trailing" spacing (first step at
t = T - 1) every scheduler returned saturated noise (tests/generator/test_schedulers.py).
"Leading" spacing starts at t = T - T / steps (960 of 1000 with 25 steps, alpha_bar
~ 0.004, still noise as sampled) and leaves no residual noise; with very few steps
(2-4) it starts lower and returns images smoother than the data, not noisier.

Generators that serve "generate" predict v instead (``GeneratorConfig.prediction_type``):
there x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v, no division, so they sample from
"trailing" timesteps, starting at t = T - 1 where pure noise is what training saw, as
Lin et al. recommend. From t = 960 an epsilon model's x0 estimate divides the error of
its predicted noise by sqrt(alpha_bar) = 0.06: an error in the noise's mean over the
image becomes a colour cast 16 times as large, which later steps keep as signal.
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


def make_scheduler(
    name: str, num_train_timesteps: int, beta_schedule: str, prediction_type: str = "epsilon"
) -> SchedulerMixin:
    """A fresh scheduler ``name`` for a model trained with the given DDPM schedule and
    prediction type ("epsilon" steps from "leading" timesteps, "v_prediction" from
    "trailing" ones, see the module docstring).

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    base = training_schedule(num_train_timesteps, beta_schedule, prediction_type)
    return scheduler_from_config(name, {**base.config, "set_alpha_to_one": True})


def training_schedule(
    num_train_timesteps: int, beta_schedule: str, prediction_type: str = "epsilon"
) -> DDPMScheduler:
    """The training schedule: what the trainer adds noise with and every sampler shares."""
    spacing = "trailing" if prediction_type == "v_prediction" else "leading"
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
    )


def scheduler_from_config(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """Scheduler ``name`` sharing ``base_config`` (betas, prediction type...) of another one,
    e.g. the scheduler a pretrained pipeline was saved with."""
    if name not in _SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    cls, overrides = _SCHEDULERS[name]
    scheduler: SchedulerMixin = cls.from_config({**base_config, **overrides})
    return scheduler
