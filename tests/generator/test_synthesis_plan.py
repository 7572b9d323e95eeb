"""A synthesis request's candidates are planned deterministically, round after round: a
top-up round's candidates follow every earlier round's, so indices, seeds and rows never
collide, and adding a round never changes the candidates already planned."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from services.generator.service import _batches, plan_candidates
from shared.dataset_arrays import SplitArrays
from shared.models import SynthesisRequest
from shared.synthesis import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_TAIL_GUIDANCE_SCALE,
    candidate_rounds,
    class_guidance_scale,
)

NAMES = ["NV", "MEL", "DF"]


def _train() -> SplitArrays:
    labels = np.repeat(np.arange(3), [12, 6, 3])
    return SplitArrays(
        images=np.zeros((len(labels), 8, 8, 3), dtype=np.uint8),
        masks=None,
        labels=labels,
        image_ids=[uuid.uuid4() for _ in labels],
        class_names=NAMES,
        groups=[str(k) for k in range(len(labels))],
    )


def _request(top_up_rounds: list[dict[str, dict[str, int]]]) -> SynthesisRequest:
    return SynthesisRequest(
        counts={"DF": 2, "MEL": 4},
        params={"oversample": 1.5, "background_policy": "any_class"},
        mode="inpaint",
        seed=7,
        top_up_rounds=top_up_rounds,
    )


def test_top_up_rounds_follow_the_first_without_collisions() -> None:
    train = _train()
    first = plan_candidates(_request([]), train)
    top_up = {"candidates": {"DF": 5}, "deficit": {"DF": 2}}

    both = plan_candidates(_request([top_up]), train)

    assert candidate_rounds(_request([top_up])) == [{"DF": 3, "MEL": 6}, {"DF": 5}]
    assert both[: len(first)] == first  # earlier rounds are unchanged
    assert [plan.index for plan in both] == list(range(14))
    assert len({plan.seed for plan in both}) == 14
    later = both[len(first) :]
    assert [plan.generation_round for plan in later] == [1] * 5
    assert {NAMES[plan.class_id] for plan in later} == {"DF"}
    assert all(plan.generation_round == 0 for plan in first)
    assert all(plan.source_row is not None for plan in both)  # inpaint: a background each
    assert plan_candidates(_request([top_up]), train) == both  # deterministic


def test_seeds_of_the_largest_request_seed_fit_int64_and_stay_deterministic() -> None:
    """``seed * 1_000_003 + index`` overflowed int64 for seeds near 2**62: the array of a
    chunk's seeds became an object array the sampler refused, after the model loaded."""
    request = _request([])
    request.seed = 2**62 - 1
    plans = plan_candidates(request, _train())
    seeds = np.array([plan.seed for plan in plans])
    assert seeds.dtype == np.int64 and seeds.min() >= 0
    assert len(set(seeds.tolist())) == len(plans)
    assert [plan.seed for plan in plan_candidates(request, _train())] == seeds.tolist()
    request.seed = 2**62 - 2
    assert not {plan.seed for plan in plan_candidates(request, _train())} & set(seeds.tolist())


def test_tail_classes_are_sampled_at_the_tail_guidance_in_batches_of_one_scale() -> None:
    # MEL has 6 training images and DF 3: both below TAIL_TRAIN_IMAGES; NV has 12.
    assert class_guidance_scale({}, 12) == DEFAULT_GUIDANCE_SCALE
    assert class_guidance_scale({}, 3) == DEFAULT_TAIL_GUIDANCE_SCALE < DEFAULT_GUIDANCE_SCALE
    assert class_guidance_scale({"guidance_scale": 2.0}, 3) == 2.0  # never above the scale
    assert class_guidance_scale({"tail_guidance_scale": None}, 3) == DEFAULT_GUIDANCE_SCALE
    assert class_guidance_scale({"guidance_scale": 5.0, "tail_guidance_scale": 1.5}, 9) == 1.5

    request = SynthesisRequest(
        counts={"NV": 5, "DF": 3},
        params={"oversample": 1.0, "background_policy": "any_class"},
        mode="inpaint",
        seed=7,
        top_up_rounds=[],
    )
    plans = plan_candidates(request, _train())
    scale = {0: 6.0, 2: 3.0}
    batches = list(_batches(plans, 2, key=lambda p: scale[p.class_id]))

    assert [[NAMES[p.class_id] for p in batch] for batch in batches] == [
        ["NV", "NV"],
        ["NV", "NV"],
        ["NV"],
        ["DF", "DF"],
        ["DF"],
    ]
    assert [p for batch in batches for p in batch] == plans


def test_pndm_needs_more_steps_with_a_generator_that_serves_generate() -> None:
    from shared.errors import InvalidInput
    from shared.models import Generator
    from shared.synthesis import check_generator_steps

    def generator(modes: list[str]) -> Generator:
        return Generator(id=uuid.uuid4(), kind="trained", config={"training": {"modes": modes}})

    pndm = {"scheduler": "pndm", "num_inference_steps": 5}
    check_generator_steps(generator(["inpaint"]), pndm)  # epsilon: 3 are enough
    check_generator_steps(generator(["generate"]), {**pndm, "num_inference_steps": 8})
    check_generator_steps(generator(["generate"]), {**pndm, "scheduler": "ddim"})
    with pytest.raises(InvalidInput, match=">= 8 with pndm .* predicts v_prediction") as error:
        check_generator_steps(generator(["inpaint", "generate"]), pndm)
    assert error.value.extra["field"] == "sampling.num_inference_steps"
