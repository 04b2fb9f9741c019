"""Campaigns against a DAM that fails: S3 faults through a proxy, a DAM that refuses a clip,
and two campaigns writing one DAM at once (local and S3)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_server import Fault, start_fault_proxy, start_s3_server

from pipeline.dam import open_dam
from pipeline.reports import ManifestMerger, read_dam_manifest, rows_from_records
from pipeline.run import CampaignConfig, run_campaign
from schemas.brief import BRIEF_ARROW_SCHEMA

ROOT = Path(__file__).resolve().parents[2]


def brief(brief_id: str, campaign_id: str = "faults", **fields) -> dict:
    return {"brief_id": brief_id, "campaign_id": campaign_id, "prompt": f"A scene called {brief_id}.",
            "source_locale": "en-US", "duration_s": 2, "resolution": "256p", "seed": 1, **fields}


def write_briefs(path: Path, briefs: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(briefs, schema=BRIEF_ARROW_SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def s3_endpoint():
    with start_s3_server() as url:
        yield url


@pytest.mark.slow  # a campaign through a faulty proxy, with retries
def test_a_campaign_through_s3_faults_lands_every_render_once_with_right_checksums(ray_session, s3_endpoint, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="flaky")
    briefs = write_briefs(tmp_path / "briefs.parquet", [brief("one", aspect_ratios=["16:9", "1:1"]), brief("two")])
    with start_fault_proxy(s3_endpoint, random_share=0.2, random_seed=7) as proxy:
        config = CampaignConfig(briefs=briefs, dam="s3://flaky/ads", s3_endpoint=proxy.url, workdir=tmp_path / "work",
                                model="tiny", device="cpu", profile="draft", manifest_merge_rows=1)
        result = run_campaign(config, log=lambda line: None)
    assert [r.status for r in result.manifest] == ["done"] * 3, [r.error for r in result.manifest]
    assert len(proxy.random_injected) >= 3, proxy.random_injected  # 503, 500 and resets all happened

    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="flaky", Prefix="ads/campaign=")["Contents"]]
    assert len(listed) == len(set(listed)) == 3 * 5  # four deliverables and one record per render
    for row in result.manifest:
        for ext, key in row.keys.items():
            body = s3.get_object(Bucket="flaky", Key=f"ads/{key}")["Body"].read()
            assert hashlib.sha256(body).hexdigest() == row.sha256[ext]
    dam = open_dam("s3://flaky/ads", s3_endpoint=s3_endpoint)
    in_manifest = read_dam_manifest(dam)
    from_records = rows_from_records(dam)
    assert set(in_manifest) == set(from_records) == {r.render_id for r in result.manifest}
    for render_id, row in from_records.items():
        assert (in_manifest[render_id].keys, in_manifest[render_id].sha256) == (row.keys, row.sha256)


def test_a_clip_the_dam_refuses_waits_in_the_spool_and_is_archived_next_run_without_rendering(
        ray_session, s3_endpoint, tmp_path):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="refuses")
    briefs = write_briefs(tmp_path / "briefs.parquet", [brief("spooled", campaign_id="spool")])
    with start_fault_proxy(s3_endpoint) as proxy:
        proxy.faults.append(Fault("PUT", 403, "AccessDenied", times=10**6, path_contains=".mp4"))
        config = CampaignConfig(briefs=briefs, dam="s3://refuses/ads", s3_endpoint=proxy.url,
                                workdir=tmp_path / "work", model="tiny", device="cpu", profile="draft")
        (failed,) = run_campaign(config, log=lambda line: None).manifest
        assert failed.status == "failed" and "AccessDenied" in failed.error and "wait in" in failed.error
        spooled = tmp_path / "work" / "spool" / failed.render_id
        assert (spooled / "row.json").is_file() and (spooled / f"{failed.render_id}.mp4").is_file()

        proxy.faults.clear()
        logged: list[str] = []
        (row,) = run_campaign(config, log=logged.append).manifest
    assert row.status == "done" and row.render_id == failed.render_id, row.error
    assert "denoise" in row.timings_s  # the timings of the render that made it, in the run before
    assert any("1 to archive from" in line and line.endswith("0 to make") for line in logged), logged
    assert not spooled.exists()
    assert read_dam_manifest(open_dam("s3://refuses/ads", s3_endpoint=s3_endpoint))[row.render_id].status == "done"


CAMPAIGN = """
import sys
from pipeline.run import CampaignConfig, run_campaign
config = CampaignConfig(briefs=sys.argv[1], dam=sys.argv[2], s3_endpoint=sys.argv[3] or None, workdir=sys.argv[4],
                        model="tiny", device="cpu", profile="draft", batch_size=1, manifest_merge_rows=1)
result = run_campaign(config, log=lambda line: None)
sys.exit(1 if result.failed else 0)
"""


@pytest.mark.slow  # two campaigns at once, on each DAM
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_campaigns_at_once_on_one_dam_keep_both_sets_of_rows(s3_endpoint, tmp_path, kind):
    if kind == "s3":
        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="shared")
        dam_uri, endpoint = "s3://shared/ads", s3_endpoint
    else:
        dam_uri, endpoint = str(tmp_path / "dam"), ""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    procs = []
    for name in ("alpha", "beta"):
        briefs = write_briefs(tmp_path / f"{name}.parquet", [brief(name, campaign_id=name, locales=["en-US", "en-GB"])])
        procs.append(subprocess.Popen([sys.executable, "-c", CAMPAIGN, str(briefs), dam_uri, endpoint,
                                       str(tmp_path / f"work-{name}")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    rows = read_dam_manifest(open_dam(dam_uri, s3_endpoint=endpoint or None))
    assert sorted((r.campaign_id, r.locale, r.status) for r in rows.values()) == [
        ("alpha", "en-GB", "done"), ("alpha", "en-US", "done"), ("beta", "en-GB", "done"), ("beta", "en-US", "done")]


def test_the_manifest_is_merged_every_few_rows_not_only_at_the_end(tmp_path):
    from pipeline.manifest import ManifestRow

    dam = open_dam(str(tmp_path / "dam"))
    merger = ManifestMerger(dam, every_rows=2, every_s=3600)
    template = {"campaign_id": "c", "brief_id": "b", "row_index": 0, "locale": "en-US", "language": "English",
                "aspect_ratio": "16:9", "resolution": "256p", "width": 448, "height": 256, "duration_s": 2, "seed": 1,
                "model_id": "tiny", "status": "done"}
    merger.add(ManifestRow(render_id="r1", **template))
    assert read_dam_manifest(dam) == {}
    merger.add(ManifestRow(render_id="r2", **template))
    assert set(read_dam_manifest(dam)) == {"r1", "r2"}
    merger.add(ManifestRow(render_id="r3", **template))
    assert set(read_dam_manifest(dam)) == {"r1", "r2"}
    merger.merge()
    assert set(read_dam_manifest(dam)) == {"r1", "r2", "r3"}
    assert json.dumps(sorted(read_dam_manifest(dam)))  # rows read back as a manifest
