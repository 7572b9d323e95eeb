from __future__ import annotations

import pytest

from shared.celery_app import BrokerConfigError, check_visibility_timeout, create_celery_app
from shared.settings import KNOWN_DEFAULT_SECRETS, Settings


def test_env_prefix_reads_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILSYNTH_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("TAILSYNTH_S3_BUCKET", "images")
    settings = Settings()
    assert settings.storage_backend == "s3" and settings.s3_bucket == "images"


def test_production_refuses_the_default_s3_secret() -> None:
    with pytest.raises(ValueError, match="S3_SECRET_KEY"):
        Settings(environment="production", storage_backend="s3")
    Settings(environment="production", storage_backend="s3", s3_secret_key="a-real-secret")


@pytest.mark.parametrize("environment", ["production", "test"])
@pytest.mark.parametrize("secret", sorted(KNOWN_DEFAULT_SECRETS))
def test_every_known_default_secret_is_refused_outside_development(
    environment: str, secret: str
) -> None:
    with pytest.raises(ValueError, match="S3_SECRET_KEY") as refused:
        Settings(environment=environment, storage_backend="s3", s3_secret_key=secret)
    assert f"'{secret}'" not in str(refused.value)  # the error never echoes a secret
    for name in ("database_url", "broker_url"):
        url = f"postgresql+psycopg://tailsynth:{secret}@postgres:5432/tailsynth"
        with pytest.raises(ValueError, match=name.upper()):
            Settings(environment=environment, **{name: url})
    Settings(environment="development", storage_backend="s3", s3_secret_key=secret)


def test_compose_defaults_are_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    """What docker-compose.yml used to set when .env said nothing."""
    monkeypatch.setenv("TAILSYNTH_ENVIRONMENT", "production")
    monkeypatch.setenv("TAILSYNTH_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("TAILSYNTH_S3_SECRET_KEY", "a-real-secret")
    monkeypatch.setenv(
        "TAILSYNTH_DATABASE_URL", "postgresql+psycopg://tailsynth:tailsynth@postgres:5432/tailsynth"
    )
    with pytest.raises(ValueError, match="DATABASE_URL"):
        Settings()
    monkeypatch.setenv(
        "TAILSYNTH_DATABASE_URL", "postgresql+psycopg://tailsynth:s3cr3t-x@postgres:5432/tailsynth"
    )
    monkeypatch.setenv("TAILSYNTH_S3_SECRET_KEY", "change-me-minio-secret")
    with pytest.raises(ValueError, match="S3_SECRET_KEY"):
        Settings()


def test_secrets_are_hidden_in_reprs_but_reach_child_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(
        storage_backend="s3",
        s3_secret_key="s3-hunter2",
        database_url="postgresql+psycopg://u:db-hunter2@h/d",
        broker_url="redis://:redis-hunter2@h:6379/0",
        weights_roots=("/weights/a", "/weights/b"),
    )
    for secret in ("s3-hunter2", "db-hunter2", "redis-hunter2"):
        assert secret not in repr(settings) and secret not in str(settings.model_dump())
    env = settings.environ()
    assert env["TAILSYNTH_S3_SECRET_KEY"] == "s3-hunter2"
    assert env["TAILSYNTH_DATABASE_URL"] == settings.resolved_database_url
    assert env["TAILSYNTH_BROKER_URL"] == settings.resolved_broker_url
    for name, value in env.items():  # what a child process reads
        monkeypatch.setenv(name, value)
    again = Settings()
    assert again.weights_roots == settings.weights_roots
    assert again.s3_secret_key.get_secret_value() == "s3-hunter2"
    assert again.resolved_database_url == settings.resolved_database_url


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
    queues = {q.name for q in conf.task_queues}
    assert queues == {"ingest", "generate", "filter", "train", "webhooks"}
    assert conf.task_annotations["tailsynth.train_generator"]["time_limit"] == 5 * 3600
