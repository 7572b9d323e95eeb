from __future__ import annotations

import pytest

from shared.celery_app import BrokerConfigError, check_visibility_timeout, create_celery_app
from shared.settings import Settings


def test_env_prefix_reads_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILSYNTH_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("TAILSYNTH_S3_BUCKET", "images")
    settings = Settings()
    assert settings.storage_backend == "s3" and settings.s3_bucket == "images"


def test_production_refuses_the_default_s3_secret() -> None:
    with pytest.raises(ValueError, match="S3_SECRET_KEY"):
        Settings(environment="production", storage_backend="s3")
    Settings(environment="production", storage_backend="s3", s3_secret_key="a-real-secret")


def test_visibility_timeout_shorter_than_a_task_is_refused() -> None:
    settings = Settings(
        broker_url="redis://127.0.0.1:6379/0",
        broker_visibility_timeout_s=60,
        train_time_limit_s=3600,
    )
    with pytest.raises(BrokerConfigError, match="shorter than the longest task time limit 18000s"):
        check_visibility_timeout(settings)
    with pytest.raises(BrokerConfigError):
        create_celery_app(settings)
    check_visibility_timeout(settings.model_copy(update={"broker_visibility_timeout_s": 18000}))


def test_celery_is_configured_for_long_idempotent_tasks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_celery_app(Settings(data_dir=tmp_path))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert {q.name for q in conf.task_queues} == {"ingest", "generate", "filter", "train"}
    assert conf.task_annotations["tailsynth.train_generator"]["time_limit"] == 5 * 3600
