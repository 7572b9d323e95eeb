"""The Celery app a worker process runs: ``celery -A shared.worker worker -Q generate``.

``tailsynth worker --queues generate`` wraps this. Settings come from the environment.
"""

from __future__ import annotations

from shared.celery_app import create_celery_app
from shared.settings import get_settings

app = create_celery_app(get_settings(), include_tasks=True)
