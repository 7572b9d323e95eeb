"""docker-compose.yml is checked here (no Docker engine on CI): the services, health
checks, volumes, GPU reservation, and environment names that the settings read."""

from __future__ import annotations

from pathlib import Path

import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"postgres", "redis", "minio", "api", "generator", "ood_filter", "trainer"}


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
