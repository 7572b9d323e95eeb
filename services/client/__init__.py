"""The tailsynth HTTP client for CI pipelines, notebooks and the CLI's client verbs.

:class:`TailsynthClient` (blocking) and :class:`AsyncTailsynthClient` (asyncio) mirror
the v1 API: one method per endpoint, grouped as ``client.datasets``, ``.generators``,
``.synthesis``, ``.jobs``, ``.curated_sets``, ``.synthetic_images``, ``.experiments``,
each returning the API's own pydantic schemas (``services.api.schemas``). Retries,
idempotency keys, waiting and resumable, verified downloads are built in; errors are
the typed exceptions of :mod:`services.client.errors`. :func:`verify_webhook` checks
the signature of a webhook tailsynth sent.
"""

from services.client._common import DEFAULT_URL, FINAL_STATES
from services.client.aio import AsyncTailsynthClient
from services.client.download import DownloadResult
from services.client.errors import (
    ApiError,
    AuthError,
    Conflict,
    DownloadError,
    InvalidRequest,
    JobCanceled,
    JobFailed,
    NotFound,
    RateLimited,
    ServerError,
    ServerUnreachable,
    TailsynthClientError,
    WaitTimeout,
)
from services.client.retry import RetryPolicy
from services.client.sync import TailsynthClient
from services.client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "DEFAULT_URL",
    "FINAL_STATES",
    "ApiError",
    "AsyncTailsynthClient",
    "AuthError",
    "Conflict",
    "DownloadError",
    "DownloadResult",
    "InvalidRequest",
    "JobCanceled",
    "JobFailed",
    "NotFound",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServerUnreachable",
    "TailsynthClientError",
    "TailsynthClient",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]
