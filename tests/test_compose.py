"""docker-compose.yml is checked here (no Docker engine on CI): the services, health
checks, volumes, GPU reservation, environment names that the settings read, and secrets
that come only from .env (interpolated here as compose would)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import KNOWN_DEFAULT_SECRETS, Settings

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"postgres", "redis", "minio", "api", "generator", "ood_filter", "trainer", "webhooks"}


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_every_service_is_there_with_a_health_check() -> None:
    services = _compose()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_state_lives_in_named_volumes_and_redis_keeps_an_aof() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    for name in ("postgres", "redis", "minio"):
        mounts = compose["services"][name]["volumes"]
        assert any(m.split(":")[0] in declared for m in mounts), name
    assert "--appendonly" in compose["services"]["redis"]["command"]
    assert (
        compose["services"]["redis"]["command"][
            compose["services"]["redis"]["command"].index("--appendonly") + 1
        ]
        == "yes"
    )


def test_generator_reserves_a_gpu() -> None:
    devices = _compose()["services"]["generator"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"


def test_environment_names_match_the_settings() -> None:
    known = {f"TAILSYNTH_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "generator", "ood_filter", "trainer"):
        env = _compose()["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("TAILSYNTH_")} - known
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"
        assert env["TAILSYNTH_STORAGE_BACKEND"] == "s3" and env["TAILSYNTH_BROKER_URL"].startswith(
            "redis://"
        )


def test_each_tailsynth_service_builds_from_its_own_dockerfile() -> None:
    for name in ("api", "generator", "ood_filter", "trainer"):
        build = _compose()["services"][name]["build"]
        dockerfile = ROOT / build["dockerfile"]
        assert dockerfile == ROOT / "services" / name / "Dockerfile" and dockerfile.is_file()
        text = dockerfile.read_text()
        assert "torch==2.14.1" in text and "torchvision==0.29.1" in text


def test_worker_healthchecks_ping_the_node_their_dockerfile_names() -> None:
    services = _compose()["services"]
    for name, node in (("generator", "generate"), ("ood_filter", "filter"), ("trainer", "train")):
        assert f"-d {node}@" in " ".join(services[name]["healthcheck"]["test"])
        assert f'"--name", "{node}"' in (ROOT / "services" / name / "Dockerfile").read_text()


# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal $.
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?)([-?])([^}]*))?\}")
SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD")


class MissingVariable(ValueError):
    pass


def _interpolate(text: str, env: dict[str, str]) -> str:
    """The compose file as docker compose would read it with ``env`` (its .env)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, colon, kind, word = match.groups()
        value = env.get(name)
        unset = value is None or (colon == ":" and value == "")
        if kind == "?" and unset:
            raise MissingVariable(f"{name}: {word}")
        if kind == "-" and unset:
            return word
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def _compose_with(env: dict[str, str]) -> dict[str, Any]:
    text = _interpolate((ROOT / "docker-compose.yml").read_text(), env)
    return yaml.safe_load(text)  # type: ignore[no-any-return]


def test_secrets_have_no_default_in_compose() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, name
        assert all(use.startswith(":?") for use in uses), f"{name} has a default: {uses}"
    services = _compose_with({name: "x-" + name for name in SECRETS})["services"]
    for name, service in services.items():
        for variable, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET", variable):
                assert value not in KNOWN_DEFAULT_SECRETS, (name, variable)


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_each_secret(missing: str) -> None:
    env = {name: "s3cr3t-" + name.lower() for name in SECRETS}
    del env[missing]
    with pytest.raises(MissingVariable, match=missing):
        _compose_with(env)
    with pytest.raises(MissingVariable, match=missing):
        _compose_with({**env, missing: ""})


def test_env_example_lists_every_variable_and_starts_nothing_as_it_is() -> None:
    example = _env_example()
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    assert used <= set(example), f"not in .env.example: {used - set(example)}"
    with pytest.raises(MissingVariable):  # copied unchanged, compose says what is missing
        _compose_with(example)


def test_filled_in_env_gives_production_settings_the_services_accept() -> None:
    env = {**_env_example(), "POSTGRES_PASSWORD": "pg-Zq81x", "MINIO_ROOT_PASSWORD": "mn-Zq81x"}
    services = _compose_with(env)["services"]
    settings = Settings(**{name.removeprefix("TAILSYNTH_").lower(): value
                           for name, value in services["api"]["environment"].items()
                           if name != "TAILSYNTH_WEIGHTS_ROOTS"})
    assert settings.environment == "production"
    assert settings.s3_secret_key.get_secret_value() == "mn-Zq81x"
    assert ":pg-Zq81x@postgres" in settings.resolved_database_url
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-Zq81x"
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "mn-Zq81x"


def test_settings_refuse_what_compose_used_to_default_to() -> None:
    env = {**_env_example(), "POSTGRES_PASSWORD": "tailsynth",
           "MINIO_ROOT_PASSWORD": "change-me-minio-secret"}
    environment = _compose_with(env)["services"]["api"]["environment"]
    with pytest.raises(ValueError, match="known default"):
        Settings(**{name.removeprefix("TAILSYNTH_").lower(): value
                    for name, value in environment.items() if name != "TAILSYNTH_WEIGHTS_ROOTS"})


def test_only_the_api_is_published() -> None:
    services = _compose()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"api"}  # not the MinIO console, nor Postgres, Redis, MinIO


def test_the_generator_reads_pretrained_weights_from_its_read_only_root() -> None:
    services = _compose_with({name: "x-" + name for name in SECRETS})["services"]
    roots = yaml.safe_load(services["generator"]["environment"]["TAILSYNTH_WEIGHTS_ROOTS"])
    mounts = {mount.split(":")[1]: mount for mount in services["generator"]["volumes"]}
    for root in roots:
        assert mounts[root].endswith(":ro"), mounts
