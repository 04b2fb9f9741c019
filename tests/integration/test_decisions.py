"""A person's review decision in the DAM (pipeline/decisions.py), on a local directory and on
moto's S3 server over HTTP: tags on every object, the append-only log, the manifest row, the
lineage event; and a later run that re-archives or re-merges the render keeps the decision."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import boto3
import pytest
from s3_server import S3_TEST_ENV, start_s3_server

from pipeline.archive import RenderAssets, archive_render
from pipeline.dam import DAM, open_dam
from pipeline.dam.keys import completion_key
from pipeline.decisions import DecisionRequest, UnknownRender, decide, next_take, read_decisions
from pipeline.lineage import LineageConfig
from pipeline.manifest import ManifestRow
from pipeline.reports import merge_into_dam_manifest, read_dam_manifest

RENDER_ID = "r" + "a1" * 11 + "b"


@pytest.fixture(scope="module")
def s3_endpoint():
    with pytest.MonkeyPatch.context() as env:
        for name, value in S3_TEST_ENV.items():
            env.setenv(name, value)
        with start_s3_server() as url:
            yield url


@pytest.fixture(params=["local", "s3"])
def dam(request, tmp_path) -> DAM:
    if request.param == "local":
        return open_dam(tmp_path / "dam")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"gate-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return open_dam(f"s3://{bucket}/dam", s3_endpoint=endpoint)


def archive(dam: DAM, folder: Path, review_status: str = "needs_review") -> tuple[ManifestRow, dict[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for ext in ("mp4", "jpg", "vtt"):
        files[ext] = folder / f"clip.{ext}"
        files[ext].write_bytes(os.urandom(2000))
    render = RenderAssets(render_id=RENDER_ID, campaign_id="spring", brief_id="b1", locale="en-US",
                          aspect_ratio="16:9", model_id="tiny", seed=7, review_status=review_status, files=files)
    result = archive_render(dam, render)
    row = ManifestRow(render_id=RENDER_ID, campaign_id="spring", brief_id="b1", row_index=0, locale="en-US",
                      language="English", aspect_ratio="16:9", resolution="256p", width=448, height=256,
                      duration_s=2, seed=7, model_id="tiny", status="done", review_status=review_status,
                      dam_uri=dam.uri, keys=result.keys, sha256=result.sha256, sizes=result.sizes)
    merge_into_dam_manifest(dam, [row])
    return row, result.keys


def all_keys(keys: dict[str, str]) -> list[str]:
    prefix = keys["mp4"].rsplit("/", 1)[0]
    return [*keys.values(), completion_key(prefix, RENDER_ID)]


def test_a_decision_tags_logs_and_updates_the_manifest(dam, tmp_path):
    row, keys = archive(dam, tmp_path / "v1")
    lineage = LineageConfig.from_env("review.test", tmp_path / "work")
    before = {key: dam.get_tags(key) for key in all_keys(keys)}
    assert all(tags["review_status"] == "needs_review" and "reviewed_by" not in tags for tags in before.values())

    decide(dam, RENDER_ID, DecisionRequest(decision="approved"), "rita", lineage=lineage)
    entry, decided = decide(dam, RENDER_ID, DecisionRequest(decision="rejected", note="logo is cut off"), "sam",
                            lineage=lineage)
    for key in all_keys(keys):
        tags = dam.get_tags(key)
        assert tags["review_status"] == "rejected" and tags["reviewed_by"] == "sam"
        assert tags["model"] == "tiny" and tags["seed"] == "7"  # the other tags stay

    log = read_decisions(dam, row)
    assert [(e.decision, e.reviewed_by, e.status_before, e.note) for e in log] == [
        ("approved", "rita", "needs_review", ""), ("rejected", "sam", "approved", "logo is cut off")]
    assert log[1] == entry and log[0].decided_at < log[1].decided_at

    stored = read_dam_manifest(dam)[RENDER_ID]
    assert stored == decided
    assert (stored.review_status, stored.review_decision, stored.reviewed_by, stored.review_note) == (
        "rejected", "rejected", "sam", "logo is cut off")

    events = [json.loads(line) for line in (tmp_path / "work" / "lineage.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"] * 2
    assert {e["job"]["facets"]["jobType"]["jobType"] for e in events} == {"REVIEW_DECISION"}

    # A retake changes no status or tag; it is logged and shown on the row.
    decide(dam, RENDER_ID, DecisionRequest(decision="retake", note="another take"), "sam", lineage=lineage)
    assert dam.get_tags(keys["mp4"])["review_status"] == "rejected"
    after = read_dam_manifest(dam)[RENDER_ID]
    assert (after.review_status, after.review_decision) == ("rejected", "retake")
    assert len(read_decisions(dam, row)) == 3
    assert next_take(list(read_dam_manifest(dam).values()), row) == 1

    with pytest.raises(UnknownRender, match="no render"):
        decide(dam, "r" + "0" * 23, DecisionRequest(decision="approved"), "sam", lineage=lineage)


def test_a_run_never_overwrites_a_persons_decision(dam, tmp_path):
    row, _ = archive(dam, tmp_path / "v1")
    decide(dam, RENDER_ID, DecisionRequest(decision="approved", note="ship it"), "rita",
           lineage=LineageConfig.from_env("review.test", tmp_path / "work"))
    # The render is made again (other deliverables: new bytes) with a new automatic status, as a
    # `paddock run` whose settings changed would, and its row is merged into the DAM's manifest.
    fresh_row, keys = archive(dam, tmp_path / "v2", review_status="rejected")
    for key in all_keys(keys):
        tags = dam.get_tags(key)
        assert (tags["review_status"], tags["reviewed_by"]) == ("approved", "rita")
    stored = read_dam_manifest(dam)[RENDER_ID]
    assert (stored.review_status, stored.review_decision, stored.reviewed_by, stored.review_note) == (
        "approved", "approved", "rita", "ship it")
    assert stored.sha256 == fresh_row.sha256 != row.sha256  # the run's own facts are merged
    assert len(read_decisions(dam, row)) == 1


def test_tags_of_a_missing_object(dam):
    assert dam.get_tags("campaign=x/nothing.mp4") is None
    assert dam.list_keys("campaign=x") == []
