from __future__ import annotations

import pytest
import torch

from services.generator.batching import run_in_batches


class FakeGpu:
    """Raises CUDA OOM for batches larger than ``capacity``; records every call."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.calls: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int) -> list[int]:
        self.calls.append((start, end))
        if end - start > self.capacity:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return list(range(start, end))


def test_oom_halves_the_batch_and_keeps_going_without_losing_items() -> None:
    gpu = FakeGpu(capacity=3)
    progress: list[tuple[int, int]] = []
    run = run_in_batches(10, 8, gpu, progress=lambda d, t: progress.append((d, t)))
    assert [item for batch in run.results for item in batch] == list(range(10))
    assert run.batch_size == 2 and run.completed == 10 and not run.canceled
    # 8 fails, 4 fails, then batches of 2 run to the end with the smaller size kept.
    assert gpu.calls[:3] == [(0, 8), (0, 4), (0, 2)]
    assert gpu.calls[3:] == [(2, 4), (4, 6), (6, 8), (8, 10)]
    assert progress == [(2, 10), (4, 10), (6, 10), (8, 10), (10, 10)]


def test_oom_at_batch_size_one_is_raised() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_in_batches(3, 4, FakeGpu(capacity=0))


def test_cancel_is_honoured_between_batches() -> None:
    gpu = FakeGpu(capacity=10)
    run = run_in_batches(9, 3, gpu, should_cancel=lambda: len(gpu.calls) == 2)
    assert run.canceled and run.completed == 6 and gpu.calls == [(0, 3), (3, 6)]


def test_other_errors_are_not_swallowed() -> None:
    def broken(start: int, end: int) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_in_batches(2, 2, broken)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        run_in_batches(2, 0, broken)
