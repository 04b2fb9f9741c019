"""Lineage runs end to end: events written to lineage.jsonl and POSTed to a real
HTTP receiver on loopback, each validated against the OpenLineage RunEvent schema."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.lineage import (
    JobType,
    LineageConfig,
    LineageRun,
    briefs_dataset,
    checkpoint_dataset,
    dam_dataset,
)
from schemas.brief import BRIEF_ARROW_SCHEMA
from openlineage_events import assert_valid, make_run_event_validator, read_jsonl

run_event_validator = pytest.fixture(scope="module")(make_run_event_validator)


def _datasets(briefs_path: Path, dam_uri: str):
    inputs = [briefs_dataset(briefs_path, BRIEF_ARROW_SCHEMA, rows=3),
              checkpoint_dataset("magihuman-distill", "s3://weights/magihuman/distill")]
    return inputs, [dam_dataset(dam_uri)]


@pytest.fixture
def file_config(tmp_path, monkeypatch) -> LineageConfig:
    monkeypatch.delenv("OPENLINEAGE_URL", raising=False)
    monkeypatch.delenv("OPENLINEAGE_DISABLED", raising=False)
    return LineageConfig.from_env("campaign.spring-launch", tmp_path / "work")


def test_schema_rejects_what_it_should(run_event_validator):
    # The validator is live: a missing runId, a bad state and a naive time all fail.
    good = {"eventType": "START", "eventTime": "2026-11-21T10:00:00+00:00",
            "run": {"runId": "0195c8a4-1b9c-7c3e-8f00-1234567890ab"}, "job": {"namespace": "n", "name": "j"},
            "producer": "https://example.com/p"}
    assert_valid(run_event_validator, good)
    for broken in ({**good, "run": {}}, {**good, "eventType": "DONE"}, {**good, "eventTime": "yesterday"},
                   {**good, "run": {"runId": "not-a-uuid"}},
                   {**good, "job": {"name": "j", "facets": {"x": {"_producer": "https://e.com/p"}}}}):
        assert list(run_event_validator.iter_errors(broken)), broken


def test_file_run_start_then_complete_validates(run_event_validator, file_config, tmp_path):
    inputs, outputs = _datasets(tmp_path / "briefs.parquet", "s3://agency-dam/campaigns")
    with LineageRun(file_config, JobType.CAMPAIGN_BATCH, inputs=inputs, outputs=outputs) as run:
        run.outputs = [dam_dataset("s3://agency-dam/campaigns", rows=14, size_bytes=9_876_543, file_count=70)]

    events = read_jsonl(tmp_path / "work" / "lineage.jsonl")
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    for event in events:
        assert_valid(run_event_validator, event)
    start, complete = events
    assert start["run"]["runId"] == complete["run"]["runId"] == run.run_id
    assert start["eventTime"] <= complete["eventTime"]
    assert complete["job"] == start["job"]
    assert complete["job"]["namespace"] == "paddock" and complete["job"]["name"] == "campaign.spring-launch"
    job_type = complete["job"]["facets"]["jobType"]
    assert (job_type["processingType"], job_type["integration"], job_type["jobType"]) == ("BATCH", "RAY", "CAMPAIGN_BATCH")
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [
        ("file", str(tmp_path / "briefs.parquet")), ("s3://weights", "magihuman/distill")]
    assert "brief_id" in [f["name"] for f in complete["inputs"][0]["facets"]["schema"]["fields"]]
    assert "outputStatistics" not in start["outputs"][0].get("outputFacets", {})
    stats = complete["outputs"][0]["outputFacets"]["outputStatistics"]
    assert (stats["rowCount"], stats["size"], stats["fileCount"]) == (14, 9_876_543, 70)
    assert run.emitted == ["START", "COMPLETE"]


class RenderFailed(RuntimeError):
    pass


def _failing_campaign():
    raise RenderFailed("replica 2 lost: NCCL timeout in all_reduce")


def test_exception_in_run_emits_fail_with_error_and_reraises(run_event_validator, file_config, tmp_path):
    inputs, outputs = _datasets(tmp_path / "briefs.parquet", str(tmp_path / "dam"))
    with pytest.raises(RenderFailed, match="NCCL timeout"):
        with LineageRun(file_config, JobType.LOCALIZATION, inputs=inputs, outputs=outputs):
            _failing_campaign()

    events = read_jsonl(tmp_path / "work" / "lineage.jsonl")
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    for event in events:
        assert_valid(run_event_validator, event)
    error = events[1]["run"]["facets"]["errorMessage"]
    assert error["message"] == "RenderFailed: replica 2 lost: NCCL timeout in all_reduce"
    assert error["programmingLanguage"] == "PYTHON"
    assert "_failing_campaign" in error["stackTrace"]
    assert events[1]["job"]["facets"]["jobType"]["jobType"] == "LOCALIZATION"


def test_two_runs_append_to_one_file_with_distinct_run_ids(run_event_validator, file_config, tmp_path):
    inputs, outputs = _datasets(tmp_path / "b.parquet", str(tmp_path / "dam"))
    first = LineageRun(file_config, JobType.CAMPAIGN_BATCH, inputs=inputs, outputs=outputs)
    assert first.start()
    assert first.complete([dam_dataset(tmp_path / "dam", rows=1, size_bytes=10)])
    second = LineageRun(file_config, JobType.CAMPAIGN_BATCH, inputs=inputs, outputs=outputs)
    assert second.start()
    assert second.fail("3 of 3 renders failed")

    events = read_jsonl(tmp_path / "work" / "lineage.jsonl")
    assert [(e["run"]["runId"], e["eventType"]) for e in events] == [
        (first.run_id, "START"), (first.run_id, "COMPLETE"), (second.run_id, "START"), (second.run_id, "FAIL")]
    assert first.run_id != second.run_id
    assert events[3]["run"]["facets"]["errorMessage"]["message"] == "3 of 3 renders failed"
    for event in events:
        assert_valid(run_event_validator, event)


def test_a_run_starts_once_and_ends_once(file_config, tmp_path):
    inputs, outputs = _datasets(tmp_path / "b.parquet", str(tmp_path / "dam"))
    run = LineageRun(file_config, JobType.CAMPAIGN_BATCH, inputs=inputs, outputs=outputs)
    with pytest.raises(RuntimeError, match="not started"):
        run.complete()
    assert run.start()
    with pytest.raises(RuntimeError, match="already started"):
        run.start()
    assert run.fail("2 of 5 renders failed")
    with pytest.raises(RuntimeError, match="ended"):
        run.complete()
    assert [e["eventType"] for e in read_jsonl(tmp_path / "work" / "lineage.jsonl")] == ["START", "FAIL"]


def test_a_failure_reported_inside_the_block_is_the_runs_one_end(file_config, tmp_path):
    inputs, outputs = _datasets(tmp_path / "b.parquet", str(tmp_path / "dam"))
    with LineageRun(file_config, JobType.CAMPAIGN_BATCH, inputs=inputs, outputs=outputs) as run:
        run.fail("1 of 3 renders failed")
    events = read_jsonl(tmp_path / "work" / "lineage.jsonl")
    assert [e["eventType"] for e in events] == ["START", "FAIL"] and run.emitted == ["START", "FAIL"]
    assert events[1]["run"]["facets"]["errorMessage"]["message"] == "1 of 3 renders failed"


def test_unwritable_lineage_file_warns_and_the_job_goes_on(file_config, tmp_path, caplog):
    (tmp_path / "work" / "lineage.jsonl").mkdir(parents=True)  # a directory where the file should be
    inputs, outputs = _datasets(tmp_path / "b.parquet", str(tmp_path / "dam"))
    with caplog.at_level(logging.WARNING, logger="pipeline.lineage"):
        with LineageRun(file_config, JobType.CAMPAIGN_BATCH, inputs=inputs, outputs=outputs) as run:
            result = "clips made"
    assert result == "clips made"
    assert run.emitted == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.lineage"]
    assert len(warnings) == 2 and "START" in warnings[0] and "COMPLETE" in warnings[1]
    assert "the job goes on" in warnings[0]


def test_openlineage_disabled_emits_nothing(file_config, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    inputs, outputs = _datasets(tmp_path / "b.parquet", str(tmp_path / "dam"))
    with LineageRun(file_config, JobType.LOCALIZATION, inputs=inputs, outputs=outputs):
        pass
    assert not (tmp_path / "work" / "lineage.jsonl").exists()


# --------------------------------------------------------------------------- HTTP


class _Receiver(BaseHTTPRequestHandler):
    """Records every POST (path, headers, JSON body) in arrival order."""

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, dict(self.headers), json.loads(body)))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def http_env(receiver, monkeypatch):
    monkeypatch.delenv("OPENLINEAGE_DISABLED", raising=False)
    monkeypatch.delenv("OPENLINEAGE_ENDPOINT", raising=False)
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{receiver.server_port}")
    monkeypatch.setenv("OPENLINEAGE_API_KEY", "lineage-token")
    return receiver


def test_http_run_posts_start_then_complete(run_event_validator, http_env, tmp_path):
    config = LineageConfig.from_env("campaign.spring-launch", tmp_path / "work")
    inputs, outputs = _datasets(tmp_path / "briefs.parquet", "s3://agency-dam/campaigns")
    with LineageRun(config, JobType.CAMPAIGN_BATCH, inputs=inputs, outputs=outputs) as run:
        run.outputs = [dam_dataset("s3://agency-dam/campaigns", rows=2, size_bytes=2048)]

    received = http_env.received
    assert [body["eventType"] for _, _, body in received] == ["START", "COMPLETE"]
    for path, headers, body in received:
        assert path == "/api/v1/lineage"  # the Marquez endpoint
        assert headers["Authorization"] == "Bearer lineage-token"
        assert headers["Content-Type"] == "application/json"
        assert body["run"]["runId"] == run.run_id
        assert_valid(run_event_validator, body)
    assert received[1][2]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 2
    assert not (tmp_path / "work" / "lineage.jsonl").exists()  # HTTP replaces the file, it does not add to it


def test_http_failing_run_posts_start_then_fail(run_event_validator, http_env, tmp_path):
    config = LineageConfig.from_env("campaign.spring-launch", tmp_path)
    inputs, outputs = _datasets(tmp_path / "briefs.parquet", str(tmp_path / "dam"))
    with pytest.raises(RenderFailed):
        with LineageRun(config, JobType.CAMPAIGN_BATCH, inputs=inputs, outputs=outputs):
            _failing_campaign()
    bodies = [body for _, _, body in http_env.received]
    assert [b["eventType"] for b in bodies] == ["START", "FAIL"]
    assert "NCCL timeout" in bodies[1]["run"]["facets"]["errorMessage"]["message"]
    for body in bodies:
        assert_valid(run_event_validator, body)


def test_http_endpoint_down_warns_quickly_and_the_job_goes_on(tmp_path, monkeypatch, caplog):
    # Bind then close a socket: the port is free and nothing listens on it.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    port = server.server_port
    server.server_close()
    monkeypatch.delenv("OPENLINEAGE_DISABLED", raising=False)
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{port}")
    config = LineageConfig.from_env("campaign.c", tmp_path, timeout_s=1.0)
    inputs, outputs = _datasets(tmp_path / "b.parquet", str(tmp_path / "dam"))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipeline.lineage"):
        with LineageRun(config, JobType.CAMPAIGN_BATCH, inputs=inputs, outputs=outputs) as run:
            pass
    elapsed = time.monotonic() - started
    assert run.emitted == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.lineage"]
    assert len(warnings) == 2 and f"127.0.0.1:{port}" in warnings[0]
    assert elapsed < 10, f"an unreachable lineage endpoint held the job for {elapsed:.1f} s"
