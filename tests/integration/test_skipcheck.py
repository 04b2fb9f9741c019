"""The index skip check (pipeline/skipcheck.py) over DAMs that hold many archived renders: what it
keeps without a call per render, what a sample finds and how it widens, what it costs on S3."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from s3_server import start_fault_proxy, start_s3_server

from model.generator import GeneratorConfig
from pipeline.archive import RenderAssets, archive_render
from pipeline.dam import open_dam
from pipeline.expand import ExpandBriefs
from pipeline.fingerprint import delivery_fingerprint, model_fingerprint
from pipeline.ingest import ValidateBriefs, first_row_by_brief_id
from pipeline.mux import CHANNEL_PROFILES
from pipeline.reports import MANIFEST_KEY, manifest_row, merge_into_dam_manifest
from pipeline.rerun import review_digest
from pipeline.review import ReviewThresholds
from pipeline.skipcheck import SAMPLE_MIN, check_archived, draw_sample, load_index
from schemas.brief import BRIEF_ARROW_SCHEMA
from schemas.render import RenderRequest

PROFILE = CHANNEL_PROFILES["web"]
THRESHOLDS = ReviewThresholds()
MADE_WITH = model_fingerprint(GeneratorConfig(model="tiny"))


def planned_requests(count: int, campaigns: int = 1) -> pa.Table:
    """``count`` one-render briefs, validated and expanded by the real stages (no Ray needed)."""
    briefs = pa.Table.from_pylist([
        {"brief_id": f"b{i:04d}", "campaign_id": f"scale{i % campaigns}" if campaigns > 1 else "scale", "prompt": f"Scene {i}: a glass on a table.",
         "source_locale": "en-US", "duration_s": 2, "resolution": "256p", "forbidden_terms": ["cure"]}
        for i in range(count)], schema=BRIEF_ARROW_SCHEMA)
    briefs = briefs.append_column("row_index", pa.array(range(count), pa.int64()))
    valid = ValidateBriefs(first_row_by_brief_id(briefs.column("brief_id").to_pylist()), "tiny")(briefs)
    return ExpandBriefs("tiny")(valid.filter(pa.compute.is_null(valid["reason"])))


def archive_stand_ins(dam, planned: pa.Table, tmp_path: Path) -> dict[str, dict]:
    """Each planned render archived as one small stand-in file and its completion record, with
    the manifest rows a run writes (fingerprint and review digest included)."""
    rows, records = [], {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for request in (RenderRequest.model_validate(r) for r in planned.to_pylist()):
        stand_in = tmp_path / f"{request.render_id}.mp4"
        stand_in.write_bytes(request.render_id.encode() * 50)
        fingerprint = delivery_fingerprint(MADE_WITH, PROFILE, request)
        result = archive_render(dam, RenderAssets(
            render_id=request.render_id, campaign_id=request.campaign_id, brief_id=request.brief_id,
            locale=request.locale, aspect_ratio=request.aspect_ratio, model_id=request.model_id, seed=request.seed,
            review_status="auto_approved", files={"mp4": stand_in}, request=request, fingerprint=fingerprint))
        rows.append(manifest_row(request, "done").model_copy(update={
            "dam_uri": dam.uri, "keys": result.keys, "sha256": result.sha256, "sizes": result.sizes,
            "fingerprint": fingerprint.digest(), "review_digest": review_digest(request.forbidden_terms, THRESHOLDS)}))
        records[request.render_id] = result.keys
    merge_into_dam_manifest(dam, rows)
    return records


def actions_of(check) -> dict[str, str]:
    return dict(zip(check.actions["render_id"].to_pylist(), check.actions["action"].to_pylist()))


def test_sample_finds_damage_widens_to_all_and_full_and_none_behave(tmp_path):
    dam = open_dam(str(tmp_path / "dam"))
    planned = planned_requests(120)
    keys = archive_stand_ins(dam, planned, tmp_path / "files")
    ids = sorted(keys)

    kept = check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="sample", seed=7)
    assert set(actions_of(kept).values()) == {"skip"} and kept.from_index == 120 and kept.looked_up == 0
    assert kept.verified == SAMPLE_MIN and not kept.failed and not kept.widened

    # One render deleted inside the seed's sample, one altered (same size, other bytes) outside it.
    sample = draw_sample(ids, seed=7)
    deleted = sample[0]
    altered = next(render_id for render_id in ids if render_id not in sample)
    (dam.root / keys[deleted]["mp4"]).unlink()
    path = dam.root / keys[altered]["mp4"]
    path.write_bytes(bytes(reversed(path.read_bytes())))

    found = check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="sample", seed=7)
    assert found.widened and found.verified == 120
    assert sorted(found.failed) == sorted([deleted, altered])
    actions = actions_of(found)
    assert actions[deleted] == actions[altered] == "render"
    assert sum(a == "skip" for a in actions.values()) == 118

    full = check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="full")
    assert full.verified == 120 and sorted(full.failed) == sorted([deleted, altered])

    trusted = check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="none")
    assert trusted.verified == 0 and set(actions_of(trusted).values()) == {"skip"}


def test_index_decides_redeliver_render_retag_and_unlisted(tmp_path):
    dam = open_dam(str(tmp_path / "dam"))
    planned = planned_requests(12)
    keys = archive_stand_ins(dam, planned, tmp_path / "files")
    ids = planned["render_id"].to_pylist()

    broadcast = check_archived(dam, planned, MADE_WITH, CHANNEL_PROFILES["broadcast"], THRESHOLDS, verify="none")
    assert set(actions_of(broadcast).values()) == {"redeliver"}
    # A re-delivery needs the archived objects: one whose file is gone is made again instead.
    gone = dam.root / keys[ids[1]]["mp4"]
    kept_bytes = gone.read_bytes()
    gone.unlink()
    broadcast = actions_of(check_archived(dam, planned, MADE_WITH, CHANNEL_PROFILES["broadcast"], THRESHOLDS,
                                          verify="none"))
    assert broadcast.pop(ids[1]) == "render" and set(broadcast.values()) == {"redeliver"}
    gone.write_bytes(kept_bytes)  # the same bytes again (a full check re-hashes them and keeps the render)
    other = MADE_WITH.model_copy(update={"weights": {"random": "other weights"}})
    assert set(actions_of(check_archived(dam, planned, other, PROFILE, THRESHOLDS, verify="none")).values()) == {"render"}

    # Stricter thresholds change the review digest: each record is read and re-tagged, nothing rendered.
    stricter = ReviewThresholds(duration_tolerance_s=0.05)
    retagged = check_archived(dam, planned, MADE_WITH, PROFILE, stricter, verify="none")
    assert retagged.retagged == 12 and set(actions_of(retagged).values()) == {"skip"} and len(retagged.records) == 12

    # A completion record deleted since: trusting the index keeps the render, a full check makes it again.
    dam.delete(keys[ids[0]]["mp4"].removesuffix(".mp4") + ".done.json")
    assert actions_of(check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="none"))[ids[0]] == "skip"
    assert actions_of(check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="full"))[ids[0]] == "render"

    # No manifest: one listing is the index, and each listed render's record is read once.
    dam.delete(MANIFEST_KEY)
    listed = check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="none")
    assert listed.looked_up == 11 and listed.from_index == 0
    actions = actions_of(listed)
    assert actions[ids[0]] == "render" and sum(a == "skip" for a in actions.values()) == 11


def test_a_record_archived_after_the_last_manifest_merge_is_found_by_the_listing_not_made_again(tmp_path):
    """A job killed between two manifest merges leaves records the manifest does not name."""
    from pipeline.reports import read_dam_manifest, _manifest_bytes

    dam = open_dam(str(tmp_path / "dam"))
    planned = planned_requests(6)
    archive_stand_ins(dam, planned, tmp_path / "files")
    rows = read_dam_manifest(dam)
    unmerged = sorted(rows)[:2]
    dam.put_bytes(MANIFEST_KEY, _manifest_bytes([row for rid, row in rows.items() if rid not in unmerged]))

    check = check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="none")
    assert set(actions_of(check).values()) == {"skip"}, actions_of(check)
    assert check.from_index == 4 and check.looked_up == 2 and set(check.records) == set(unmerged)


def test_the_manifest_has_a_row_group_per_campaign_and_the_index_reads_only_the_planned_ones(tmp_path):
    import io

    import pyarrow.parquet as pq

    dam = open_dam(str(tmp_path / "dam"))
    planned = planned_requests(9, campaigns=3)
    archive_stand_ins(dam, planned, tmp_path / "files")
    manifest = pq.ParquetFile(io.BytesIO(dam.get_bytes(MANIFEST_KEY)))
    groups = [manifest.read_row_group(i, columns=["campaign_id"])["campaign_id"].to_pylist()
              for i in range(manifest.num_row_groups)]
    assert [set(group) for group in groups] == [{"scale0"}, {"scale1"}, {"scale2"}]
    index = load_index(dam, ["scale1"])
    assert index.listed == set(planned.filter(pa.compute.equal(planned["campaign_id"], "scale1"))["render_id"].to_pylist())
    assert set(index.manifest["render_id"].to_pylist()) == set(planned.filter(pa.compute.equal(planned["campaign_id"], "scale1"))["render_id"]
                                     .to_pylist())


@pytest.fixture(scope="module")
def s3_endpoint():
    with start_s3_server() as url:
        yield url


def test_skipping_on_s3_costs_well_under_one_call_per_render(s3_endpoint, tmp_path):
    bucket = f"skip-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    planned = planned_requests(200)
    archive_stand_ins(open_dam(f"s3://{bucket}/dam", s3_endpoint=s3_endpoint), planned, tmp_path)

    with start_fault_proxy(s3_endpoint) as proxy:
        dam = open_dam(f"s3://{bucket}/dam", s3_endpoint=proxy.url)
        check = check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="sample", seed=1)
        sampled = list(proxy.forwarded)
        proxy.forwarded.clear()
        check_archived(dam, planned, MADE_WITH, PROFILE, THRESHOLDS, verify="none")
        trusted = list(proxy.forwarded)

    assert check.from_index == 200 and check.verified == SAMPLE_MIN and not check.failed
    heads = [path for method, path in sampled if method == "HEAD" and "/dam/" in path]  # not the bucket's
    assert len(heads) == SAMPLE_MIN  # one object per stand-in render, and only the sample's
    assert len(sampled) / 200 < 0.1, sampled
    # Trusting the index: the manifest and one listing, nothing per render.
    assert len(trusted) <= 3 and not any(method == "HEAD" and "/dam/" in path for method, path in trusted), trusted
