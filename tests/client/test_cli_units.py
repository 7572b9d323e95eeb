"""The CLI's own logic without a server: where --url / --api-key may stand, the
--require-gain rule, waits that report each change once, and progress that prints a
line only when it changed."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from services.api.schemas import ExperimentRead, JobRead
from services.cli import ExitCode, _gain, main
from services.client import RetryPolicy, ServerUnreachable, TailsynthClient, WaitTimeout
from services.client.progress import ByteProgress, JobProgress
from tests.client.test_retry import JOB
from tests.fixtures.services import free_port


@pytest.mark.parametrize(
    "where",
    [
        lambda url: ["--url", url, "--max-retries", "0", "jobs", "list"],
        lambda url: ["jobs", "--url", url, "--max-retries", "0", "list"],
        lambda url: ["jobs", "list", "--url", url, "--max-retries", "0"],
    ],
)
def test_url_and_retries_are_taken_anywhere_on_the_line(where: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"TAILSYNTH_URL": "http://127.0.0.1:9", "TAILSYNTH_MAX_RETRIES": "7"}
    result = CliRunner().invoke(main, where(dead), env=env)
    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    assert f"server at {dead} unreachable after 1 attempt(s)" in result.output


def _experiment(comparisons: dict[str, dict[str, Any] | None]) -> ExperimentRead:
    arms: dict[str, Any] = {"ce": {"spec": {"kind": "baseline"}, "comparisons": {}}}
    for name, comparison in comparisons.items():
        arms[name] = {
            "spec": {"kind": "curated"},
            "comparisons": {"vs_best_baseline": comparison, "vs_ce": None},
        }
    return ExperimentRead.model_validate(
        {
            "id": JOB["id"],
            "dataset_id": JOB["id"],
            "state": "succeeded",
            "config": {},
            "results": {"arms": arms, "verdicts": []},
            "report_url": None,
            "job_id": JOB["id"],
            "created_at": JOB["created_at"],
            "updated_at": JOB["created_at"],
        }
    )


def test_require_gain_needs_a_synthetic_arm_better_than_its_reference() -> None:
    better = {"against": "weighted_ce", "better": True, "worse": False}
    unclear = {"against": "weighted_ce", "better": False, "worse": False}
    worse = {"against": "weighted_ce", "better": False, "worse": True}
    assert _gain(_experiment({"curated": better, "curated+la": worse}))[0]
    assert not _gain(_experiment({"curated": unclear, "curated+la": worse}))[0]
    assert _gain(_experiment({})) == (False, "no curated or adaptive arm to judge")


def _job(state: str, stage: str, done: int, percent: float) -> dict[str, Any]:
    return JOB | {
        "state": state,
        "stage": stage,
        "progress": {"done": done, "total": 10, "percent": percent, "stage_percent": percent},
    }


def test_wait_reports_each_change_once_and_times_out_with_the_job() -> None:
    states = [
        _job("queued", "queued", 0, 0.0),
        _job("queued", "queued", 0, 0.0),
        _job("running", "loading", 3, 30.0),
        _job("running", "loading", 3, 30.0),
        _job("succeeded", "done", 10, 100.0),
    ]
    replies = iter(states)
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json=next(replies)))
    sleeps: list[float] = []
    seen: list[JobRead] = []
    policy = RetryPolicy(sleep=sleeps.append)
    with TailsynthClient("http://ts.test", "k", retry=policy, transport=transport) as client:
        job = client.jobs.wait(JOB["id"], on_progress=seen.append, poll_interval=1.0)
        assert job.state == "succeeded"
        assert [j.state for j in seen] == ["queued", "running", "succeeded"]
        assert sleeps == [1.0, 1.5, 1.0, 1.5]  # backs off while nothing moves

    transport = httpx.MockTransport(lambda _: httpx.Response(200, json=states[0]))
    with TailsynthClient("http://ts.test", "k", transport=transport) as client:
        with pytest.raises(WaitTimeout) as info:
            client.jobs.wait(JOB["id"], timeout=0.3, poll_interval=0.05)
    assert info.value.job.state == "queued" and "goes on running" in str(info.value)


def test_progress_lines_in_a_log_are_printed_on_change_only() -> None:
    out = io.StringIO()
    progress = JobProgress(out, tty=False)
    for state in [
        _job("running", "training", 1, 10.0),
        _job("running", "training", 1, 10.0),
        _job("running", "training", 2, 20.0),
        _job("succeeded", "done", 10, 100.0),
    ]:
        progress(JobRead.model_validate(state))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and len(set(lines)) == 3

    out = io.StringIO()
    with ByteProgress("download c.zip", out, tty=False) as bytes_progress:
        for done in range(0, 1001, 7):
            bytes_progress(done, 1000)
        bytes_progress(1000, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("download c.zip: 0%") and lines[-1].startswith(
        "download c.zip: 100%"
    )
    assert len(lines) == 11 and len(set(lines)) == 11


def test_a_terminal_gets_a_bar_not_lines() -> None:
    out = io.StringIO()
    with JobProgress(out, tty=True) as progress:
        progress(JobRead.model_validate(_job("running", "training", 5, 50.0)))
        progress(JobRead.model_validate(_job("succeeded", "done", 10, 100.0)))
    assert "100%" in out.getvalue() and "\r" in out.getvalue()


def test_a_wait_polls_through_a_server_restart_and_gives_up_after_the_tolerance() -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"),
        httpx.Response(503, json={"detail": "starting"}),
        httpx.Response(200, json=_job("succeeded", "done", 10, 100.0)),
    ]

    def handler(_: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    sleeps: list[float] = []
    policy = RetryPolicy(max_retries=0, sleep=sleeps.append)
    transport = httpx.MockTransport(handler)
    with TailsynthClient("http://ts.test", "k", retry=policy, transport=transport) as client:
        assert client.jobs.wait(JOB["id"], max_poll_interval=4.0).state == "succeeded"
    assert sleeps == [4.0, 4.0]

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    policy = RetryPolicy(max_retries=0, sleep=lambda _: None)
    transport = httpx.MockTransport(down)
    with TailsynthClient("http://ts.test", "k", retry=policy, transport=transport) as client:
        with pytest.raises(ServerUnreachable):
            client.jobs.wait(JOB["id"], outage_tolerance=0.05)


def test_the_first_clients_untyped_methods_still_answer_dicts() -> None:
    """benchmarks/ drive the service through request, dataset and wait."""
    transport = httpx.MockTransport(
        lambda _: httpx.Response(200, json=_job("succeeded", "done", 10, 100.0))
    )
    with TailsynthClient("http://ts.test", "k", transport=transport) as client:
        assert client.request("GET", f"/v1/jobs/{JOB['id']}")["state"] == "succeeded"
        job = client.wait(JOB["id"], timeout=5)
    assert isinstance(job, dict) and job["result"] == {} and job["id"] == JOB["id"]


def test_curated_arms_are_added_to_the_servers_default_baselines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(422, json={"detail": "stop here", "field": "arms"})

    transport = httpx.MockTransport(handler)
    monkeypatch.setattr(
        "services.cli._client",
        lambda _: TailsynthClient("http://ts.test", "k", transport=transport),
    )
    args = ["experiments", "run", "--dataset", JOB["id"], "--curated", "c1"]
    result = CliRunner().invoke(main, [*args, "--curated-loss", "focal"])
    assert result.exit_code == ExitCode.INVALID and "field arms" in result.output
    assert sent[0]["arms"] == [
        "ce",
        "weighted_ce",
        "logit_adjusted",
        {"curated_set_ids": ["c1"]},
        {"curated_set_ids": ["c1"], "loss": "focal"},
    ]
    CliRunner().invoke(main, [*args, "--arm", "focal"])
    assert sent[1]["arms"] == ["focal", {"curated_set_ids": ["c1"]}]
