"""The CLI against a live ``tailsynth serve``, as a CI job runs it: the whole campaign by
the CLI alone, and every documented exit code with the server's message and no
traceback. ``--url`` / ``--api-key`` are given before the group, after the verb, and by
the environment."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from services.cli import EXIT_CODES_EPILOG, ExitCode
from tests.client.conftest import TINY_GENERATOR, TINY_SYNTHESIS, Campaign, Live
from tests.fixtures.cli_server import CLI
from tests.fixtures.services import free_port


def run(
    live: Live,
    *args: str,
    key: str | None = None,
    env_connection: bool = True,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    env = dict(live.env)
    if env_connection:
        env |= {"TAILSYNTH_URL": live.url, "TAILSYNTH_API_KEY": key or live.key}
    done = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def expect(done: subprocess.CompletedProcess[str], code: ExitCode) -> None:
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])


def test_the_campaign_by_the_cli_alone(live: Live, tmp_path: Path) -> None:
    """upload (the demo set) -> generator -> synthesis -> download -> experiment."""
    connection = ("--url", live.url, "--api-key", live.key)
    made = run(live, *connection, "datasets", "demo", "--total", "120", "--image-size", "32",
               "-q", env_connection=False)  # fmt: skip
    expect(made, ExitCode.OK)
    dataset_id = made.stdout.strip()
    config = tmp_path / "generator.json"
    config.write_text(json.dumps(TINY_GENERATOR))
    trained = run(live, "generators", "train", "--dataset", dataset_id, "--config", str(config),
                  "-q", *connection, env_connection=False)  # fmt: skip
    expect(trained, ExitCode.OK)
    generator_id = trained.stdout.strip()
    config = tmp_path / "synthesis.json"
    config.write_text(json.dumps(TINY_SYNTHESIS))
    synthesized = run(live, "synthesize", "--dataset", dataset_id, "--generator", generator_id,
                      "--count", "DF=3", "--count", "VASC=2", "--config", str(config),
                      "--wait", "-q")  # fmt: skip
    expect(synthesized, ExitCode.OK)
    curated_id = synthesized.stdout.strip()
    progress = synthesized.stderr.splitlines()
    assert progress and len(progress) == len(set(progress)), progress  # printed on change

    shown = run(live, "curated", "show", curated_id, "--json")
    expect(shown, ExitCode.OK)
    assert json.loads(shown.stdout)["state"] == "ready"
    downloaded = run(live, "curated", "download", curated_id, "--out", str(tmp_path / "c.zip"),
                     "--json")  # fmt: skip
    expect(downloaded, ExitCode.OK)
    result = json.loads(downloaded.stdout)
    assert result["verified_by"] and (tmp_path / "c.zip").stat().st_size == result["size"]
    manifest = run(live, "curated", "manifest", curated_id, "--json")
    expect(manifest, ExitCode.OK)
    rows = json.loads(manifest.stdout)
    assert rows and all(row["synthetic"] for row in rows)

    experiment = run(live, "experiments", "run", "--dataset", dataset_id, "--arm", "ce",
                     "--curated", curated_id, "--backbone", "resnet10t", "--image-size", "32",
                     "--epochs", "1", "--min-train-steps", "0", "--folds", "2",
                     "--report", str(tmp_path / "r.html"), "--require-gain", "--json")  # fmt: skip
    body = json.loads(experiment.stdout)
    gained = any("(better)" in line for line in body["results"]["verdicts"] if "curated" in line)
    # A toy classifier rarely shows a gain: the exit code must follow the verdict either way.
    expect(experiment, ExitCode.OK if gained else ExitCode.NO_GAIN)
    assert gained or "--require-gain: no synthetic arm is better" in experiment.stderr
    assert "<svg" in (tmp_path / "r.html").read_text()
    shown = run(live, "experiments", "show", body["id"], "--require-gain")
    expect(shown, ExitCode.OK if gained else ExitCode.NO_GAIN)
    listed = run(live, "jobs", "list", "--json", "--limit", "100")
    expect(listed, ExitCode.OK)
    assert {j["state"] for j in json.loads(listed.stdout)["items"]} <= {
        "succeeded", "partial", "failed", "canceled", "running", "queued"
    }  # fmt: skip


def test_a_failed_job_exits_3_with_the_servers_reason(live: Live, campaign: Campaign) -> None:
    missing = live.weights_root / "no-such-pipeline"
    done = run(live, "generators", "register", "--dataset", campaign.dataset_id,
               "--source", str(missing), "--no-probe", "--timeout", "120")  # fmt: skip
    expect(done, ExitCode.JOB_FAILED)
    assert "failed" in done.stderr and "no-such-pipeline" in done.stderr


def test_cancel_timeout_and_conflict(live: Live) -> None:
    queued = run(live, "datasets", "demo", "--total", "40000", "--image-size", "256",
                 "--no-wait", "--json")  # fmt: skip
    expect(queued, ExitCode.OK)
    job_id = json.loads(queued.stdout)["ingest_job_id"]
    expect(run(live, "jobs", "wait", job_id, "--timeout", "1"), ExitCode.TIMEOUT)
    expect(run(live, "jobs", "cancel", job_id), ExitCode.OK)
    waited = run(live, "jobs", "wait", job_id, "--timeout", "120")
    expect(waited, ExitCode.JOB_CANCELED)
    assert "canceled" in waited.stderr
    expect(run(live, "jobs", "cancel", job_id), ExitCode.OK)  # canceled twice: not an error
    finished = run(live, "jobs", "list", "--state", "succeeded", "--limit", "1", "--json")
    done_id = json.loads(finished.stdout)["items"][0]["id"]
    refused = run(live, "jobs", "cancel", done_id)
    expect(refused, ExitCode.CONFLICT)
    assert "already succeeded" in refused.stderr


def test_auth_not_found_and_invalid_requests(live: Live, campaign: Campaign) -> None:
    wrong = run(live, "jobs", "list", key="ts_wrong_key")
    expect(wrong, ExitCode.AUTH)
    assert "HTTP 401" in wrong.stderr and "API key" in wrong.stderr
    # The flag after the verb wins over the environment.
    expect(run(live, "datasets", "list", "--api-key", "ts_wrong_key"), ExitCode.AUTH)
    missing = run(live, "jobs", "show", str(uuid.uuid4()))
    expect(missing, ExitCode.NOT_FOUND)
    assert "not found" in missing.stderr
    expect(run(live, "curated", "download", str(uuid.uuid4())), ExitCode.NOT_FOUND)
    invalid = run(live, "synthesize", "--dataset", campaign.dataset_id,
                  "--generator", campaign.generator_id, "--count", "DF=-5")  # fmt: skip
    expect(invalid, ExitCode.INVALID)
    assert "HTTP 422" in invalid.stderr and "field counts.DF" in invalid.stderr
    usage = run(live, "synthesize", "--dataset", campaign.dataset_id,
                "--generator", campaign.generator_id)  # fmt: skip
    expect(usage, ExitCode.USAGE)


def test_a_server_that_is_down_exits_9_after_the_retry_budget(live: Live) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = run(live, "jobs", "list", "--url", dead, "--max-retries", "2")
    expect(done, ExitCode.UNREACHABLE)
    assert f"server at {dead} unreachable after 3 attempt(s)" in done.stderr
    assert done.stderr.count("retrying in") == 2


@pytest.mark.parametrize("args", [("--help",), ("jobs", "wait", "--help")])
def test_help_documents_the_exit_codes(args: tuple[str, ...]) -> None:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)
    if args == ("--help",):
        for line in EXIT_CODES_EPILOG.splitlines()[2:]:
            assert line.strip() in done.stdout
    assert done.returncode == 0 and "--url" in done.stdout and "--api-key" in done.stdout


def test_a_rerun_step_with_its_idempotency_key_gets_the_first_job(
    live: Live, campaign: Campaign, tmp_path: Path
) -> None:
    config = tmp_path / "synthesis.json"
    config.write_text(json.dumps(TINY_SYNTHESIS))
    step = ("synthesize", "--dataset", campaign.dataset_id, "--generator", campaign.generator_id,
            "--count", "DF=2", "--config", str(config), "--idempotency-key", "ci-1234-synthesize",
            "--json")  # fmt: skip
    first, again = run(live, *step), run(live, *step)
    expect(first, ExitCode.OK)
    expect(again, ExitCode.OK)
    assert json.loads(first.stdout) == json.loads(again.stdout)
    other = run(live, *step, "--count", "DF=3")  # the same key, another body (DF=3)
    expect(other, ExitCode.INVALID)
    assert "Idempotency-Key" in other.stderr
    run(live, "jobs", "cancel", json.loads(first.stdout)["job_id"])
