"""The samplers leave no noise in the final image.

A network that predicts the noise exactly is written down in closed form for data whose
pixels are independent Gaussians, x0 ~ N(mean image, std^2) (std = 0: one known clean
image): E[x0 | x_t] = mean + a std^2 / (a^2 std^2 + s^2) (x_t - a mean), with
a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t), and eps = (x_t - a E[x0 | x_t]) / s.
A trained network is never exact, so the predictor may add an error of ``error`` times
a fixed function of its input. Sampled through the generator's own loop, every scheduler
must return the clean image (std = 0), and images spread around the mean no more than
the data (std > 0): more spread is noise the sampler left in. The same predictor can
answer v = a eps - s E[x0 | x_t] instead (v-prediction generators, which serve
"generate" and sample from the last timestep); both must pass.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from services.generator.config import GeneratorConfig
from services.generator.sampling import TrainedGenerator
from services.generator.schedulers import SCHEDULER_NAMES, make_scheduler
from shared import synthesis
from shared.sampling_params import min_inference_steps

SIZE = 16
TIMESTEPS = 1000
SCHEDULE = "squaredcos_cap_v2"  # the training schedule


class NoisePredictor(torch.nn.Module):
    """Stands in for the UNet: the true noise (or v) of Gaussian data, plus ``error`` times
    a fixed function of the input (see module docstring)."""

    def __init__(self, mean: torch.Tensor, std: float, error: float,
                 prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.mean, self.std, self.error = mean.double(), std, error
        self.prediction_type = prediction_type
        self.alphas_cumprod = make_scheduler("ddpm", TIMESTEPS, SCHEDULE).alphas_cumprod.double()

    def forward(self, unet_input: torch.Tensor, timestep: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> SimpleNamespace:
        x_t = unet_input[:, : self.mean.shape[0]].double()
        alpha_bar = self.alphas_cumprod[int(timestep)]
        a, s = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
        variance = self.std**2
        x0 = self.mean + a * variance / (a * a * variance + s * s) * (x_t - a * self.mean)
        eps = (x_t - a * x0) / s
        out = a * eps - s * x0 if self.prediction_type == "v_prediction" else eps
        out = out + self.error * torch.tanh(3.0 * x_t + 1.0)
        return SimpleNamespace(sample=out.float())


def _sample(scheduler: str, steps: int, std: float, error: float, n: int,
            prediction_type: str = "epsilon") -> np.ndarray:
    """``n`` generated images minus the data mean: float (n, 1, S, S) in pixel units of
    [-1, 1] (one uint8 level is 1 / 127.5)."""
    ramp = torch.linspace(-0.4, 0.4, SIZE)
    mean = (ramp[None, :, None] + ramp[None, None, :]) / 2.0  # (1, S, S) smooth ramp
    config = GeneratorConfig(resolution=SIZE, allow_tiny=True, channels=1, num_classes=1,
                             block_out_channels=(16, 32), attention_levels=(),
                             num_train_timesteps=TIMESTEPS, beta_schedule=SCHEDULE,
                             prediction_type=prediction_type)  # type: ignore[arg-type]
    predictor = NoisePredictor(mean, std, error, prediction_type)
    generator = TrainedGenerator(config, predictor, None,  # type: ignore[arg-type]
                                 "stub", torch.device("cpu"))
    out = generator.generate(np.zeros(n, np.int64), np.arange(n), scheduler=scheduler,
                             num_inference_steps=steps, guidance_scale=1.0)
    pixels = out.images.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1.0
    return pixels - mean.numpy()[None]


def test_sampling_starts_where_noise_is_still_informative_and_ends_on_alpha_bar_one() -> None:
    for name in SCHEDULER_NAMES:
        scheduler = make_scheduler(name, TIMESTEPS, SCHEDULE)
        scheduler.set_timesteps(25)
        # Not at T - 1 (alpha_bar ~ 2e-9, where an x0 estimate from epsilon is ill-posed).
        first = int(scheduler.timesteps[0])
        assert first < TIMESTEPS - 1 and float(scheduler.alphas_cumprod[first]) > 1e-3, name
        if hasattr(scheduler, "final_alpha_cumprod"):  # DDIM, PNDM
            assert float(scheduler.final_alpha_cumprod) == 1.0, name


def test_v_prediction_samples_from_the_last_timestep() -> None:
    for name in SCHEDULER_NAMES:
        scheduler = make_scheduler(name, TIMESTEPS, SCHEDULE, "v_prediction")
        scheduler.set_timesteps(25)
        assert int(scheduler.timesteps[0]) == TIMESTEPS - 1, name
        assert scheduler.config.prediction_type == "v_prediction", name


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [2, 25])
@pytest.mark.parametrize("error", [0.0, 0.01])
def test_the_true_noise_gives_back_the_clean_image(
    scheduler: str, steps: int, error: float, prediction_type: str
) -> None:
    steps = max(steps, min_inference_steps(scheduler, prediction_type))
    residual = _sample(scheduler, steps, std=0.0, error=error, n=2,
                       prediction_type=prediction_type)
    assert np.abs(residual).max() <= 1.5 / 127.5  # rounding to uint8 only


def test_pndm_refuses_two_steps_whose_warm_up_would_leave_noise() -> None:
    with pytest.raises(ValueError, match="num_inference_steps must be >= 3 with pndm"):
        _sample("pndm", 2, std=0.0, error=0.0, n=1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [4, 25])
def test_samples_spread_no_more_than_the_data(
    scheduler: str, steps: int, prediction_type: str
) -> None:
    std = 0.2
    steps = max(steps, min_inference_steps(scheduler, prediction_type))
    residual = _sample(scheduler, steps, std=std, error=0.01, n=16,
                       prediction_type=prediction_type)
    assert abs(residual.mean()) < 0.03
    assert 0.2 * std < residual.std() <= 1.1 * std


def test_the_api_offers_exactly_the_schedulers_the_generator_builds() -> None:
    """The API checks names against shared.synthesis (no torch there); the registry here
    builds them. A name in one and not the other would be refused or fail late."""
    assert set(synthesis.SCHEDULER_NAMES) == set(SCHEDULER_NAMES)
    assert synthesis.DEFAULT_SCHEDULER in SCHEDULER_NAMES
