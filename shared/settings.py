"""The one settings object for every tailsynth process (env prefix ``TAILSYNTH_``).

The same code runs three ways (DESIGN.md §3): embedded (SQLite, a local object
directory, a broker on the filesystem), docker-compose (Postgres, Redis, MinIO) and
scale-out (more workers on the same servers). Only these settings differ.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

DEFAULT_S3_SECRET = "tailsynth-dev-secret"
# Secrets that have been written down somewhere (these defaults, docker-compose.yml and
# .env.example before they asked for real ones, the images' own defaults): refused
# outside development, whoever sets them.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        DEFAULT_S3_SECRET,
        "change-me-minio-secret",
        "change-me-postgres",
        "change-me",
        "tailsynth",
        "minioadmin",
        "postgres",
        "password",
        "secret",
    }
)


class Settings(BaseSettings):
    # Errors never echo the input: it holds the secrets.
    model_config = SettingsConfigDict(
        env_prefix="TAILSYNTH_", extra="ignore", hide_input_in_errors=True
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".tailsynth")

    # State. ``None`` means "SQLite inside data_dir" (the embedded default). A secret: a
    # server's URL carries its password.
    database_url: SecretStr | None = None
    # Seconds to wait for a new Postgres connection (libpq counts 2 at least); without it a
    # server that stops answering hangs every request and task that needs a connection.
    database_connect_timeout_s: int = Field(10, ge=2)
    # Broker. ``None`` means the filesystem transport inside data_dir: no server needed.
    broker_url: SecretStr | None = None
    # Redis re-delivers an unacknowledged task after this many seconds; it must be longer
    # than the longest task time limit or a long training run would run twice at once.
    broker_visibility_timeout_s: int = 6 * 3600
    broker_key_prefix: str = ""
    # Seconds to connect to Redis and to wait for its answer to one command: a broker that
    # stops answering fails a send (the reaper sends the job later) and makes a worker
    # reconnect, instead of hanging the request, the reaper or the worker without end.
    broker_socket_timeout_s: float = Field(10.0, gt=1)

    # Objects: "local" (a directory) or "s3" (MinIO or any S3-compatible endpoint).
    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path | None = None
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "tailsynth"
    s3_secret_key: SecretStr = SecretStr(DEFAULT_S3_SECRET)
    s3_bucket: str = "tailsynth"
    s3_secure: bool = False
    s3_region: str | None = None
    # Seconds to connect to the S3 endpoint and to wait for each read of its answer, and
    # the tries of a request: a server that stopped answering is an error within about
    # (connect + read) x tries, which the API answers 503 for and a task backs off from,
    # not a request or task hung for the client's default of 5 minutes a try.
    s3_connect_timeout_s: float = 5.0
    s3_read_timeout_s: float = 60.0
    s3_tries: int = Field(3, ge=1)

    # Pretrained generator weights a tenant may name by path: directories inside these
    # roots (on the generator worker; JSON list in the environment). Any other source must
    # be a model id already in the offline Hugging Face cache.
    weights_roots: tuple[Path, ...] = ()

    # Upload and decode limits (bad input must fail with a clear 4xx, not exhaust a worker).
    max_upload_bytes: int = 2 * 1024**3
    max_archive_entries: int = 200_000
    max_archive_total_bytes: int = 20 * 1024**3
    max_compression_ratio: float = 100.0
    max_image_pixels: int = 40_000_000
    # A label file (.csv/.tsv/.txt entry) is read whole by the API's pre-flight check.
    max_label_file_bytes: int = 16 * 1024**2
    # Rows a curated set's manifest (and so its archive) may list; more answer 413.
    max_manifest_rows: int = 200_000

    # Task time limits in seconds, per queue.
    ingest_time_limit_s: int = 2 * 3600
    generate_time_limit_s: int = 5 * 3600
    filter_time_limit_s: int = 2 * 3600
    train_time_limit_s: int = 5 * 3600

    # Generator training keeps this many of its newest checkpoints (the last one is the
    # final one), in storage and on the worker's scratch; older ones are deleted once a
    # newer one is stored.
    generator_keep_checkpoints: int = Field(2, ge=1)

    # Jobs: the lease (seconds) a worker's claim on a job holds. The worker renews it
    # every third of this while the job runs. A running job may be claimed again once
    # its lease ran out (its worker died or hung; the reaper then re-sends it), or at
    # once by a delivery on the same host whose owner process is gone. Scratch
    # leftovers (.tmp-*, .old-*) untouched for this long belong to no live task and are
    # deleted at task start.
    job_lease_s: int = 600
    # A stage of a job is claimed at most this many times (its worker died, its lease ran
    # out) before the job fails with its last error.
    job_max_attempts: int = 3
    # Transient errors (database, broker or storage connection) are retried inside the
    # task: this many tries in all, waiting backoff_s, twice that, ... up to backoff_max_s.
    job_transient_tries: int = 5
    job_transient_backoff_s: float = 1.0
    job_transient_backoff_max_s: float = 60.0
    # Each task's soft time limit is this far below its hard one, so the task can record
    # on its job why it stopped before the hard limit kills it.
    task_soft_time_limit_margin_s: int = 120
    reaper_interval_s: float = 15.0
    ingest_chunk_size: int = 100

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # An API key's last-used time is written at most this often (seconds), so requests
    # do not each write to the database.
    api_key_last_used_interval_s: float = 60.0
    # A request body that is not a multipart upload (JSON) is refused over this size (413);
    # uploads have max_upload_bytes.
    max_json_body_bytes: int = 1024**2
    # An Idempotency-Key's answer is replayed for this long (seconds); after that the key
    # is free again and the API's reaper deletes the record.
    idempotency_ttl_s: float = 24 * 3600
    # GET /v1/health asks the workers whether they are alive, waiting at most
    # health_worker_timeout_s for their answers, and reuses the answer for
    # health_cache_s seconds (health checks are frequent and anonymous).
    health_worker_timeout_s: float = 1.0
    health_cache_s: float = 10.0

    # Webhooks (shared/webhooks.py). Targets on private, loopback, link-local, multicast
    # or reserved addresses are refused (at creation and again, after a fresh DNS lookup,
    # at each delivery) unless webhook_allow_private, or the address is inside one of
    # webhook_allowed_networks (CIDRs, JSON list in the environment).
    webhook_allow_private: bool = False
    webhook_allowed_networks: tuple[str, ...] = ()
    # Seconds one delivery attempt may take (connect + answer).
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    # Seconds to wait after failed attempt 1, 2, ...; the last one is the last retry
    # (30 s ... 8 h: about 13 h of retries in all). JSON list in the environment.
    webhook_retry_schedule_s: tuple[float, ...] = (
        30.0, 120.0, 600.0, 1800.0, 3600.0, 2 * 3600.0, 4 * 3600.0, 8 * 3600.0,
    )  # fmt: skip
    # A retry due within this many seconds is sent by the worker with a countdown; later
    # ones are sent by the API's reaper when due (a broker holds no hours-long countdowns).
    webhook_countdown_max_s: float = 300.0
    # A delivery sent this long ago (seconds) and still not attempted is sent again.
    webhook_redispatch_s: float = 600.0
    # job.progress events: at most one per this many seconds, and only when the job
    # reached a new 10 % step.
    webhook_progress_interval_s: float = Field(5.0, ge=0)
    webhooks_time_limit_s: int = 300

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return networks

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _schedule(cls, schedule: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay < 0 for delay in schedule):
            raise ValueError("webhook retry delays are seconds, 0 or more")
        return schedule

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment == "development":
            return self
        if self.storage_backend == "s3":
            secret = self.s3_secret_key.get_secret_value()
            if not secret or secret in KNOWN_DEFAULT_SECRETS:
                raise ValueError(
                    f"TAILSYNTH_S3_SECRET_KEY is a known default or empty; set a secret of "
                    f"your own outside development (environment={self.environment})"
                )
        for name, url in (("DATABASE_URL", self.database_url), ("BROKER_URL", self.broker_url)):
            password = _url_password(url)
            if password is not None and password in KNOWN_DEFAULT_SECRETS:
                raise ValueError(
                    f"the password in TAILSYNTH_{name} is a known default; set a secret of "
                    f"your own outside development (environment={self.environment})"
                )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'tailsynth.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url.get_secret_value() if self.broker_url else "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "objects").resolve()

    @property
    def longest_task_time_limit_s(self) -> int:
        return max(
            self.ingest_time_limit_s,
            self.generate_time_limit_s,
            self.filter_time_limit_s,
            self.train_time_limit_s,
        )

    def environ(self) -> dict[str, str]:
        """These settings as ``TAILSYNTH_*`` variables, to hand to a child process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, (list, tuple)):
                value = json.dumps([str(item) for item in value])  # how settings read lists
            if value is not None:
                env[f"TAILSYNTH_{name.upper()}"] = str(value)
        return env


def _url_password(url: SecretStr | None) -> str | None:
    """The password in a server URL (``scheme://user:password@host/...``), if any."""
    if url is None:
        return None
    try:
        password = make_url(url.get_secret_value()).password
    except ValueError:  # not a URL sqlalchemy can parse; Celery and psycopg will say so
        return None
    return None if password is None else str(password)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
