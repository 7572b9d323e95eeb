"""The Celery application: four queues, JSON only, late acks, one task at a time.

Queues: ``ingest`` (light work: dataset ingest, demo data), ``generate`` (GPU),
``filter`` and ``train``, and ``webhooks`` (job events to receivers, apart so a slow
receiver never holds a job's worker). Tasks are sent by name with the job id as their only
argument (workers re-read the job row; no image bytes or ORM objects travel).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.settings import Settings

QUEUES = ("ingest", "generate", "filter", "train")
#: Not a job queue (no job waits on it): declared beside QUEUES, not in it.
WEBHOOK_QUEUE = "webhooks"

# Task names and their queues: the API sends by name, so it never imports worker code.
TASK_QUEUES: dict[str, str] = {
    "tailsynth.ingest_dataset": "ingest",
    "tailsynth.train_generator": "generate",
    "tailsynth.register_generator": "generate",
    "tailsynth.synthesize": "generate",
    "tailsynth.filter_candidates": "filter",
    "tailsynth.run_experiment": "train",
    "tailsynth.deliver_webhook": WEBHOOK_QUEUE,
}

TASK_MODULES = (
    "shared.ingest.tasks",
    "services.generator.tasks",
    "services.ood_filter.tasks",
    "services.trainer.tasks",
    "services.webhooks.tasks",
)


class BrokerConfigError(RuntimeError):
    """The broker settings would make long tasks run twice; refused at start-up."""


def check_visibility_timeout(settings: Settings) -> None:
    """Refuse a Redis visibility timeout shorter than the longest task time limit.

    Redis re-delivers a task that is not acknowledged within the visibility timeout;
    with ``acks_late`` a five-hour training task would otherwise be handed to a second
    worker while the first is still running it.
    """
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        longest = settings.longest_task_time_limit_s
        if settings.broker_visibility_timeout_s < longest:
            raise BrokerConfigError(
                f"broker visibility timeout {settings.broker_visibility_timeout_s}s is shorter "
                f"than the longest task time limit {longest}s; raise "
                "TAILSYNTH_BROKER_VISIBILITY_TIMEOUT_S or lower the time limits"
            )


def _time_limit(settings: Settings, queue: str) -> int:
    return int(getattr(settings, f"{queue}_time_limit_s"))


def _soft_time_limit(settings: Settings, queue: str) -> int:
    """Below the hard limit by the margin (at most half the limit): the task gets
    ``SoftTimeLimitExceeded`` first and records on its job why it stopped."""
    hard = _time_limit(settings, queue)
    return hard - min(settings.task_soft_time_limit_margin_s, hard // 2)


def create_celery_app(settings: Settings, *, include_tasks: bool = False) -> Celery:
    check_visibility_timeout(settings)
    app = Celery("tailsynth", include=list(TASK_MODULES) if include_tasks else [])
    transport_options: dict[str, object] = {}
    if settings.resolved_broker_url.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("in", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "in"),
            "data_folder_out": str(folder / "in"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    else:
        transport_options = {
            "visibility_timeout": settings.broker_visibility_timeout_s,
            # Without these a Redis that takes connections and never answers hangs a
            # send, and with it the request or the reaper, without end. A worker's BRPOP
            # waits 1 s at a time, well within them.
            "socket_timeout": settings.broker_socket_timeout_s,
            "socket_connect_timeout": settings.broker_socket_timeout_s,
        }
        if settings.broker_key_prefix:
            transport_options["global_keyprefix"] = settings.broker_key_prefix
    app.conf.update(
        broker_url=settings.resolved_broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the job rows, not in Celery
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name) for name in (*QUEUES, WEBHOOK_QUEUE)],
        task_default_queue="ingest",
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_annotations={
            name: {
                "time_limit": _time_limit(settings, queue),
                "soft_time_limit": _soft_time_limit(settings, queue),
            }
            for name, queue in TASK_QUEUES.items()
        },
    )
    return app
