"""The ``webhooks`` queue's task: one attempt of one delivery, by id."""

from __future__ import annotations

import uuid

from celery import shared_task

from services.webhooks.delivery import deliver, send
from shared.runtime import get_runtime
from shared.webhooks import DELIVER_TASK


@shared_task(name=DELIVER_TASK)
def deliver_webhook(delivery_id: str) -> None:
    """Attempt the delivery if it is due; a retry due soon goes back on the queue with a
    countdown (later ones are sent by the API's reaper when due)."""
    runtime = get_runtime()
    delay = deliver(runtime.sessions, uuid.UUID(delivery_id), runtime.settings)
    if delay is not None:
        send(runtime.celery, delivery_id, countdown=delay)
