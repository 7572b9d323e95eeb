"""One live ``tailsynth serve`` for the client and CLI tests, and a small campaign on it
(a demo dataset, a tiny generator, a curated set) that tests read but never change."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.client import TailsynthClient
from tests.fixtures.cli_server import create_key, start_cli_server

# Small enough for seconds on a 2-core CPU; the flow is what these tests are about.
FAST_POLL = {"poll_interval": 0.2, "max_poll_interval": 0.5}
TINY_GENERATOR = {
    "training": {
        "resolution": 32,
        "block_out_channels": [16, 32],
        "attention_levels": [],
        "max_train_steps": 8,
        "batch_size": 8,
        "checkpoint_every": 8,
        "mixed_precision": "no",
    },
    "quality_probe": {"enabled": False},
}
TINY_SYNTHESIS = {
    "sampling": {"num_inference_steps": 2, "batch_size": 8},
    "filter": {
        "classifier_backbone": "resnet10t",
        "classifier_image_size": 32,
        "classifier_epochs": 1,
        "classifier_min_steps": 0,
    },
}


@dataclass(frozen=True)
class Live:
    url: str
    key: str
    data_dir: Path
    weights_root: Path
    env: dict[str, str]

    def client(self, **kwargs: object) -> TailsynthClient:
        return TailsynthClient(self.url, self.key, **kwargs)  # type: ignore[arg-type]

    def new_key(self, tenant: str) -> str:
        """A key of a tenant of its own: its lists see only what the test made."""
        return create_key(self.env, tenant, "--tenant", tenant)


@dataclass(frozen=True)
class Campaign:
    dataset_id: str
    generator_id: str
    curated_set_id: str


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp("serve")
    weights_root = data_dir / "weights"
    weights_root.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TAILSYNTH_DATA_DIR": str(data_dir),
        "TAILSYNTH_WEIGHTS_ROOTS": json.dumps([str(weights_root)]),
    }
    for name in ("TAILSYNTH_URL", "TAILSYNTH_API_KEY", "TAILSYNTH_MAX_RETRIES"):
        env.pop(name, None)
    key = create_key(env, "client-tests")
    serve, url = start_cli_server("serve", data_dir, env)
    try:
        yield Live(url, key, data_dir, weights_root, env)
    finally:
        serve.stop()


@pytest.fixture(scope="package")
def campaign(live: Live) -> Campaign:
    with live.client() as client:
        created = client.datasets.create_demo(name="campaign", total=120, image_size=32)
        client.jobs.wait(created.job_id, timeout=120, **FAST_POLL)
        generator = client.generators.create(TINY_GENERATOR, dataset_id=created.dataset_id)
        client.jobs.wait(generator.job_id, timeout=120, **FAST_POLL)
        synthesis = client.synthesis.create(
            TINY_SYNTHESIS,
            dataset_id=created.dataset_id,
            generator_id=generator.generator_id,
            counts={"DF": 3, "VASC": 2},
        )
        client.jobs.wait(synthesis.job_id, timeout=180, **FAST_POLL)
    return Campaign(
        str(created.dataset_id), str(generator.generator_id), str(synthesis.curated_set_id)
    )
