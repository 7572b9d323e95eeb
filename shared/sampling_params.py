"""Sampler names and limits, with no imports beyond the standard library.

Both sides need them: the API refuses an unknown scheduler at the request without
importing torch, and the generator library (services.generator.sampling) checks steps
without importing the database, Celery or storage layers that shared.synthesis brings.
"""

from __future__ import annotations

from typing import Literal, get_args

#: The schedulers a request may name: services.generator.schedulers builds each of them
#: (a test keeps the two in step).
SchedulerName = Literal["ddpm", "ddim", "pndm", "euler", "euler_a", "dpmsolver++", "unipc"]
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)
#: Fewest inference steps a scheduler samples without leftover noise (PNDM's warm-up
#: step; see services.generator.sampling); the others need one.
MIN_INFERENCE_STEPS: dict[str, int] = {"pndm": 3}
#: PNDM from the last timestep (v-prediction generators sample "trailing", see
#: services.generator.schedulers) needs more steps before its warm-up leaves no noise:
#: 12 grey levels at 3 steps, 2 at 5, under 1 at 8 (tests/generator/test_schedulers.py).
MIN_INFERENCE_STEPS_V_PREDICTION: dict[str, int] = {"pndm": 8}


def min_inference_steps(scheduler: str, prediction_type: str = "epsilon") -> int:
    """Fewest inference steps ``scheduler`` samples without leftover noise for a generator
    that predicts ``prediction_type`` ("epsilon" or "v_prediction")."""
    table = (MIN_INFERENCE_STEPS_V_PREDICTION if prediction_type == "v_prediction"
             else MIN_INFERENCE_STEPS)
    return table.get(scheduler, 1)


def prediction_type_for(modes: list[str] | tuple[str, ...]) -> str:
    """What a generator trained for ``modes`` predicts when its config does not say:
    v when it serves "generate" (it samples from pure noise; see
    services.generator.config.default_prediction_type), else the noise."""
    return "v_prediction" if "generate" in modes else "epsilon"
