"""Which Celery workers are alive, per queue, as the health check reports them.

The API asks every worker at once (a broadcast ``active_queues``, what ``celery inspect``
sends) and waits at most ``timeout_s`` for the answers; a worker that does not answer
in time counts as gone. The answer is reused for ``cache_s`` seconds: health checks are
frequent and anonymous, and each broadcast costs every worker a reply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from shared.celery_app import QUEUES


class WorkerCensus:
    """Live workers by queue (``{"generate": ["generate@gpu-1"], "train": [], ...}``)."""

    def __init__(
        self,
        celery: Celery,
        *,
        timeout_s: float,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.celery = celery
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.clock = clock
        self._lock = threading.Lock()  # one broadcast at a time; others wait for its answer
        self._answer: dict[str, list[str]] | None = None
        self._asked_at = 0.0

    def by_queue(self) -> dict[str, list[str]]:
        """Worker names per queue, every queue of the app listed (possibly with none).

        Raises whatever reaching the broker raises; a failed census is not cached.
        """
        with self._lock:
            if self._answer is None or self.clock() - self._asked_at >= self.cache_s:
                self._answer = self._ask()
                self._asked_at = self.clock()
            return {queue: list(names) for queue, names in self._answer.items()}

    def _ask(self) -> dict[str, list[str]]:
        replies: dict[str, list[dict[str, Any]]] = (
            self.celery.control.inspect(timeout=self.timeout_s).active_queues() or {}
        )
        workers: dict[str, list[str]] = {queue: [] for queue in QUEUES}
        for worker, queues in sorted(replies.items()):
            for queue in queues or []:
                workers.setdefault(str(queue["name"]), []).append(worker)
        return workers
