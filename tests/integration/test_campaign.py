"""The campaign batch job end to end on real Ray, real ffmpeg and S3 over HTTP (moto)."""

from __future__ import annotations

import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openlineage_events import assert_valid, make_run_event_validator, read_jsonl
from s3_server import start_s3_server

from pipeline.dam.keys import render_key_prefix
from pipeline.run import CampaignConfig, run_campaign
from schemas.brief import BRIEF_ARROW_SCHEMA

BRIEFS = [
    {"brief_id": "talk", "campaign_id": "spring", "prompt": "A woman smiles and speaks.", "source_locale": "en-US",
     "dialogue": [{"speaker": "Woman", "line": "Hello there."}],
     "localized_dialogue": [{"locale": "de-DE", "lines": [{"speaker": "Frau", "line": "Hallo."}]}],
     "locales": ["en-US", "de-DE"], "duration_s": 2, "resolution": "256p", "seed": 3},
    {"brief_id": "ambient", "campaign_id": "spring", "prompt": "Bubbles rise in a glass.", "source_locale": "en-US",
     "aspect_ratios": ["1:1"], "duration_s": 2, "resolution": "256p", "forbidden_terms": ["cure"]},
]


@pytest.fixture(scope="module")
def s3_endpoint():
    with start_s3_server() as url:
        yield url


def write_briefs(path):
    pq.write_table(pa.Table.from_pylist(BRIEFS, schema=BRIEF_ARROW_SCHEMA), path)
    return path


def test_campaign_lands_in_s3_and_reruns_upload_nothing(ray_session, s3_endpoint, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="dam")
    s3.upload_file(str(write_briefs(tmp_path / "briefs.parquet")), "dam", "incoming/briefs.parquet")
    config = CampaignConfig(briefs="s3://dam/incoming/briefs.parquet", dam="s3://dam/ads",
                            s3_endpoint=s3_endpoint, workdir=tmp_path / "work", model="tiny", device="cpu")
    logged: list[str] = []
    result = run_campaign(config, log=logged.append)

    assert [r.status for r in result.manifest] == ["done"] * 3, [r.error for r in result.manifest]
    assert any(line.startswith("[3/3]") for line in logged)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket="dam", Prefix="ads/")["Contents"]}
    for row in result.manifest:
        prefix = "ads/" + render_key_prefix(row.campaign_id, row.brief_id, row.locale, row.aspect_ratio, row.variant_id)
        assert prefix.startswith(f"ads/campaign=spring/brief={row.brief_id}/variant=main/locale={row.locale}/")
        for ext in ("mp4", "wav", "jpg", "vtt"):
            key = f"{prefix}/{row.render_id}.{ext}"
            assert key in listed and row.keys[ext] == key.removeprefix("ads/")
            head = s3.head_object(Bucket="dam", Key=key, ChecksumMode="ENABLED")
            assert head["Metadata"]["render_id"] == row.render_id
            assert head["Metadata"]["brief"] == row.brief_id
            assert head["Metadata"]["locale"] == row.locale
            assert head["Metadata"]["model"] == "tiny" and head["Metadata"]["seed"] == str(row.seed)
            assert head["Metadata"]["sha256"] == row.sha256[ext]
            tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket="dam", Key=key)["TagSet"]}
            assert tags["review_status"] == row.review_status
        assert row.review_status in ("auto_approved", "needs_review", "rejected")
        assert row.timings_s["review"] > 0 and row.timings_s["mux"] > 0
    assert {"ads/manifest.parquet", "ads/contact_sheet.html"} <= listed
    manifest = pq.read_table(result.manifest_path)
    assert manifest.num_rows == 3 and set(manifest.column("status").to_pylist()) == {"done"}
    index = s3.get_object(Bucket="dam", Key="ads/contact_sheet.html")["Body"].read().decode()
    assert "<a href='contact_sheets/spring.html'>spring</a>: 3 renders (3 done)" in index
    sheet = s3.get_object(Bucket="dam", Key="ads/contact_sheets/spring.html")["Body"].read().decode()
    assert all(f"src='../{row.keys['mp4']}'" in sheet for row in result.manifest)  # relative to the DAM root

    again = run_campaign(config, log=logged.append)
    assert [r.status for r in again.manifest] == ["skipped"] * 3
    assert [r.render_id for r in again.manifest] == [r.render_id for r in result.manifest]
    assert [r.sha256 for r in again.manifest] == [r.sha256 for r in result.manifest]
    assert [r.review_status for r in again.manifest] == [r.review_status for r in result.manifest]
    assert sum(r.bytes_uploaded for r in again.manifest) == 0
    versions = s3.list_objects_v2(Bucket="dam", Prefix="ads/campaign=")["KeyCount"]
    assert versions == 3 * 5  # four deliverables and one completion record per render, nothing twice
    validator = make_run_event_validator()
    events = read_jsonl(tmp_path / "work" / "lineage.jsonl")
    for event in events:
        assert_valid(validator, event)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "START", "COMPLETE"]
    complete = events[1]
    assert complete["job"]["facets"]["jobType"]["jobType"] == "CAMPAIGN_BATCH"
    assert (complete["inputs"][0]["namespace"], complete["inputs"][0]["name"]) == ("s3://dam", "incoming/briefs.parquet")
    assert complete["outputs"][0]["namespace"] == "s3://dam" and complete["outputs"][0]["name"] == "ads"
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 3

    record = json.loads(s3.get_object(Bucket="dam", Key=f"ads/{render_key_prefix('spring', 'talk', 'en-US', '16:9')}/"
                                      f"{result.manifest[0].render_id}.done.json")["Body"].read())
    assert record["review"]["review_status"] == result.manifest[0].review_status


def test_a_failing_render_becomes_a_failure_row_and_the_job_goes_on(ray_session, tmp_path):
    briefs = [BRIEFS[1], {**BRIEFS[1], "brief_id": "needs-image", "reference_image_uri": str(tmp_path / "missing.png")}]
    pq.write_table(pa.Table.from_pylist(briefs, schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    config = CampaignConfig(briefs=tmp_path / "briefs.parquet", dam=str(tmp_path / "dam"),
                            workdir=tmp_path / "work", model="tiny", device="cpu")
    result = run_campaign(config, log=lambda line: None)

    by_brief = {row.brief_id: row for row in result.manifest}
    assert by_brief["ambient"].status == "done"
    failed = by_brief["needs-image"]
    assert failed.status == "failed" and "missing.png" in failed.error
    assert failed.keys == {} and result.failed == [failed]
    assert not list((tmp_path / "dam").rglob(f"{failed.render_id}*"))

    events = read_jsonl(tmp_path / "work" / "lineage.jsonl")
    validator = make_run_event_validator()
    for event in events:
        assert_valid(validator, event)
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    assert "1 of 2 renders failed" in events[1]["run"]["facets"]["errorMessage"]["message"]


@pytest.mark.slow  # a pool of TP=2 replicas: rank processes
def test_a_tensor_parallel_pool_renders_the_campaign(ray_session, tmp_path):
    """tp_size 2 on CPU: each render actor owns a placement group with two gloo rank actors."""
    pq.write_table(pa.Table.from_pylist([BRIEFS[1]], schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    config = CampaignConfig(briefs=tmp_path / "briefs.parquet", dam=str(tmp_path / "dam"), workdir=tmp_path / "work",
                            model="tiny", device="cpu", tp_size=2)
    result = run_campaign(config, log=lambda line: None)
    assert [r.status for r in result.manifest] == ["done"], [r.error for r in result.manifest]
    assert result.manifest[0].timings_s["denoise"] > 0
    assert list((tmp_path / "dam").rglob(f"{result.manifest[0].render_id}.mp4"))
    # The replica's placement group goes with the run; a leak would starve every later job of CPUs.
    states = [group["state"] for group in ray_session.util.placement_group_table().values()]
    assert states and set(states) == {"REMOVED"}


def test_a_missing_s3_briefs_file_is_one_clear_error(s3_endpoint):
    from pipeline.ingest import BriefsFileError, read_briefs_table

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="empty")
    with pytest.raises(BriefsFileError, match=r"s3://empty/nope.parquet: cannot read the briefs file \(NoSuchKey\)"):
        read_briefs_table("s3://empty/nope.parquet", s3_endpoint)
