"""Re-runs against what the DAM holds: failed rows corrected, re-tag, re-delivery, re-render, superseded rows."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.run
from pipeline.dam import open_dam
from pipeline.fingerprint import model_fingerprint
from pipeline.reports import MANIFEST_KEY, _manifest_bytes, read_dam_manifest
from pipeline.run import CampaignConfig, run_campaign
from schemas.brief import BRIEF_ARROW_SCHEMA

BRIEF = {"brief_id": "talk", "campaign_id": "rerun", "prompt": "A man speaks to the camera.", "source_locale": "en-US",
         "dialogue": [{"speaker": "Man", "line": "This drink is a miracle."}], "duration_s": 2, "resolution": "256p",
         "seed": 5}


def config_for(tmp_path, brief: dict, **overrides) -> CampaignConfig:
    pq.write_table(pa.Table.from_pylist([brief], schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    return CampaignConfig(briefs=tmp_path / "briefs.parquet", dam=str(tmp_path / "dam"), workdir=tmp_path / "work",
                          model="tiny", device="cpu", **{"profile": "draft", **overrides})


def record_of(tmp_path, render_id: str) -> dict:
    return json.loads(next((tmp_path / "dam").rglob(f"{render_id}.done.json")).read_text())


@pytest.mark.slow  # five runs of one campaign
def test_reruns_correct_retag_redeliver_rerender_and_supersede(ray_session, tmp_path, monkeypatch):
    first = run_campaign(config_for(tmp_path, BRIEF), log=lambda line: None)
    (row,) = first.manifest
    assert row.status == "done", row.error
    render_id = row.render_id
    mp4 = next((tmp_path / "dam").rglob(f"{render_id}.mp4"))
    assert record_of(tmp_path, render_id)["fingerprint"]["profile"]["name"] == "draft"

    # A run that archived the clip died before its reports: the DAM's manifest still says failed.
    dam = open_dam(str(tmp_path / "dam"))
    dam.put_bytes(MANIFEST_KEY, _manifest_bytes([row.model_copy(update={"status": "failed", "error": "boom",
                                                                        "keys": {}})]))
    again = run_campaign(config_for(tmp_path, BRIEF), log=lambda line: None)
    assert again.manifest[0].status == "skipped"
    corrected = read_dam_manifest(dam)[render_id]
    assert corrected.status == "skipped" and corrected.error is None and corrected.keys == row.keys

    # A new forbidden term re-tags the archived clip; nothing is rendered or uploaded again.
    before = mp4.stat().st_mtime_ns
    tagged = run_campaign(config_for(tmp_path, {**BRIEF, "forbidden_terms": ["miracle"]}), log=lambda line: None)
    (tagged_row,) = tagged.manifest
    assert tagged_row.status == "skipped" and tagged_row.review_status == "rejected"
    assert any("miracle" in reason for reason in tagged_row.review_reasons)
    assert record_of(tmp_path, render_id)["review_status"] == "rejected"
    assert mp4.stat().st_mtime_ns == before

    # Broadcast: re-delivered at -23 LUFS from the archived frames and stem, without the model.
    broadcast = run_campaign(config_for(tmp_path, BRIEF, profile="broadcast"), log=lambda line: None)
    (loud,) = broadcast.manifest
    assert loud.status == "done", loud.error
    assert "denoise" not in loud.timings_s
    assert abs(loud.review_integrated_lufs - (-23.0)) < 1.0
    assert record_of(tmp_path, render_id)["fingerprint"]["profile"]["name"] == "broadcast"
    assert run_campaign(config_for(tmp_path, BRIEF, profile="broadcast"), log=lambda line: None).manifest[0].status \
        == "skipped"

    # New weights: the render is made again.
    made_with = model_fingerprint
    monkeypatch.setattr(pipeline.run, "model_fingerprint", lambda config: made_with(config).model_copy(
        update={"weights": {"random": "other weights"}}))
    rerendered = run_campaign(config_for(tmp_path, BRIEF, profile="broadcast"), log=lambda line: None)
    assert rerendered.manifest[0].status == "done" and rerendered.manifest[0].timings_s["denoise"] > 0
    monkeypatch.undo()

    # An edited brief: its old clip stays in the DAM, superseded.
    edited = run_campaign(config_for(tmp_path, {**BRIEF, "prompt": "A man smiles at the camera."}),
                          log=lambda line: None)
    (new_row,) = edited.manifest
    assert new_row.render_id != render_id and new_row.status == "done"
    rows = read_dam_manifest(dam)
    assert rows[render_id].status == "superseded" and rows[new_row.render_id].status == "done"
    assert mp4.exists()
    sheet = (tmp_path / "dam" / "contact_sheets" / "rerun.html").read_text()
    assert "<h2>talk · main · en-US · 16:9 (superseded)</h2>" in sheet


def test_localize_counts_and_retries_per_render_not_per_locale(tmp_path, monkeypatch):
    """A (brief, locale) with one render done and one failed is not "rendered": the failed one is made again."""
    import pipeline.localize
    from pipeline.manifest import ManifestRow

    template = {"campaign_id": "c", "brief_id": "b", "row_index": 0, "locale": "en-US", "language": "English",
                "resolution": "256p", "width": 448, "height": 256, "duration_s": 2, "seed": 1, "model_id": "tiny"}
    rows = [ManifestRow(render_id="wide", aspect_ratio="16:9", status="done", **template),
            ManifestRow(render_id="tall", aspect_ratio="9:16", status="failed", error="boom", **template)]
    dam = open_dam(str(tmp_path / "dam"))
    dam.put_bytes(MANIFEST_KEY, _manifest_bytes(rows))
    selected = {}

    def fake_run(config, log, *, job_type, select):
        from schemas.render import RenderRequest

        for render_id, aspect in (("wide", "16:9"), ("tall", "9:16"), ("square", "1:1")):
            request = RenderRequest(render_id=render_id, aspect_ratio=aspect, prompt="p", dialogue=[],
                                    forbidden_terms=[], **template)
            selected[render_id] = select(request)

    monkeypatch.setattr(pipeline.localize, "run_campaign", fake_run)
    pipeline.localize.localize(config_for(tmp_path, BRIEF), log=lambda line: None)
    assert selected == {"wide": False, "tall": True, "square": True}


@pytest.mark.slow  # one campaign and four re-runs
def test_a_deleted_or_altered_object_is_found_by_sample_and_full_and_redone(ray_session, tmp_path):
    first = run_campaign(config_for(tmp_path, BRIEF), log=lambda line: None)
    (row,) = first.manifest
    assert row.status == "done", row.error
    dam_root = tmp_path / "dam"
    record = record_of(tmp_path, row.render_id)
    assert all(obj["mtime_ns"] for obj in record["objects"].values())  # a local DAM's record keeps mtimes

    # Deleted: the sample (at least SAMPLE_MIN renders, so this one; the seed names the draw) finds it.
    (dam_root / row.keys["mp4"]).unlink()
    logged: list[str] = []
    sampled = run_campaign(config_for(tmp_path, BRIEF, verify="sample", verify_seed=3), log=logged.append)
    assert sampled.manifest[0].status == "done" and sampled.manifest[0].timings_s["denoise"] > 0
    assert (dam_root / row.keys["mp4"]).is_file()
    assert any("1 verified (sample" in line and "1 failed" in line for line in logged), logged

    # Altered in place, same size and mtime: only a re-hash tells. Trusting the index keeps it; full finds it.
    wav = dam_root / row.keys["wav"]
    stat = wav.stat()
    wav.write_bytes(bytes(reversed(wav.read_bytes())))
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run_campaign(config_for(tmp_path, BRIEF, verify="none"), log=lambda line: None).manifest[0].status \
        == "skipped"
    full = run_campaign(config_for(tmp_path, BRIEF, verify="full"), log=lambda line: None)
    assert full.manifest[0].status == "done" and full.manifest[0].timings_s["denoise"] > 0
    assert full.manifest[0].sha256["wav"] == row.sha256["wav"]  # made again, the same bytes as first archived
    assert run_campaign(config_for(tmp_path, BRIEF), log=lambda line: None).manifest[0].status == "skipped"
