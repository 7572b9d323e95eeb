"""Running per-image work in batches that shrink when the GPU runs out of memory.

Generation is batched for throughput, but the batch that fits depends on the GPU, the
resolution and whether guidance doubles the batch. Rather than guess, start from the
requested size and halve it whenever CUDA reports out-of-memory, then carry on with the
smaller size for the rest of the job. Work already finished is kept; the failed batch is
retried, never skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

logger = logging.getLogger(__name__)

BatchResult = TypeVar("BatchResult")


@dataclass
class BatchedRun(Generic[BatchResult]):
    """Results of :func:`run_in_batches`.

    Attributes:
        results: one entry per completed batch, in order.
        completed: number of items done (a prefix of the input: items ``[0, completed)``).
        canceled: ``should_cancel`` stopped the run before every item was done.
        batch_size: the batch size in use at the end (smaller than asked after OOMs).
    """

    results: list[BatchResult] = field(default_factory=list)
    completed: int = 0
    canceled: bool = False
    batch_size: int = 0


def run_in_batches(
    total: int,
    batch_size: int,
    run_batch: Callable[[int, int], BatchResult],
    *,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> BatchedRun[BatchResult]:
    """Call ``run_batch(start, end)`` over ``[0, total)`` in consecutive slices.

    Args:
        total: number of items.
        batch_size: initial items per call, >= 1.
        run_batch: does items ``[start, end)``; may raise ``torch.cuda.OutOfMemoryError``.
        progress: ``progress(items_done, total)`` after each batch.
        should_cancel: polled before each batch; ``True`` stops (finished batches kept).

    Raises:
        torch.cuda.OutOfMemoryError: a batch of a single item still does not fit.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    run: BatchedRun[BatchResult] = BatchedRun(batch_size=batch_size)
    while run.completed < total:
        if should_cancel is not None and should_cancel():
            run.canceled = True
            break
        end = min(run.completed + run.batch_size, total)
        try:
            result = run_batch(run.completed, end)
        except torch.cuda.OutOfMemoryError:
            if run.batch_size == 1:
                raise
            run.batch_size = max(1, run.batch_size // 2)
            logger.warning("CUDA out of memory; retrying with batch size %d", run.batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # release the failed batch's blocks before retrying
            continue
        run.results.append(result)
        run.completed = end
        if progress is not None:
            progress(run.completed, total)
    return run
