"""The one settings object for every tailsynth process (env prefix ``TAILSYNTH_``).

The same code runs three ways (DESIGN.md §3): embedded (SQLite, a local object
directory, a broker on the filesystem), docker-compose (Postgres, Redis, MinIO) and
scale-out (more workers on the same servers). Only these settings differ.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_S3_SECRET = "tailsynth-dev-secret"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAILSYNTH_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".tailsynth")

    # State. ``None`` means "SQLite inside data_dir" (the embedded default).
    database_url: str | None = None
    # Broker. ``None`` means the filesystem transport inside data_dir: no server needed.
    broker_url: str | None = None
    # Redis re-delivers an unacknowledged task after this many seconds; it must be longer
    # than the longest task time limit or a long training run would run twice at once.
    broker_visibility_timeout_s: int = 6 * 3600
    broker_key_prefix: str = ""

    # Objects: "local" (a directory) or "s3" (MinIO or any S3-compatible endpoint).
    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path | None = None
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "tailsynth"
    s3_secret_key: str = DEFAULT_S3_SECRET
    s3_bucket: str = "tailsynth"
    s3_secure: bool = False
    s3_region: str | None = None

    # Upload and decode limits (bad input must fail with a clear 4xx, not exhaust a worker).
    max_upload_bytes: int = 2 * 1024**3
    max_archive_entries: int = 200_000
    max_archive_total_bytes: int = 20 * 1024**3
    max_compression_ratio: float = 100.0
    max_image_pixels: int = 40_000_000

    # Task time limits in seconds, per queue.
    ingest_time_limit_s: int = 2 * 3600
    generate_time_limit_s: int = 5 * 3600
    filter_time_limit_s: int = 2 * 3600
    train_time_limit_s: int = 5 * 3600

    # Jobs: a running job whose heartbeat is older than this is re-sent by the reaper.
    job_lease_s: int = 600
    reaper_interval_s: float = 15.0
    ingest_chunk_size: int = 100

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if (
            self.environment == "production"
            and self.storage_backend == "s3"
            and self.s3_secret_key == DEFAULT_S3_SECRET
        ):
            raise ValueError(
                "TAILSYNTH_S3_SECRET_KEY must be changed from its default in production"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tailsynth.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

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
            if value is not None:
                env[f"TAILSYNTH_{name.upper()}"] = str(value)
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
