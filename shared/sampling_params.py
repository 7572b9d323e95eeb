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
