"""Takes: a brief with `takes: 3` renders three seeds per (variant, locale, aspect); review scores
each, exactly one per group is the best take in the manifest, and the contact sheet shows it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.manifest import take_group
from pipeline.run import CampaignConfig, run_campaign
from schemas.brief import BRIEF_ARROW_SCHEMA

BRIEF = {
    "brief_id": "hooks", "campaign_id": "takes", "prompt": "A {product} rolls across a {surface}.",
    "source_locale": "en-US", "aspect_ratios": ["16:9"], "duration_s": 2, "resolution": "256p", "takes": 3,
    "seed": 11,
    "variants": [
        {"variant_id": "ball", "slots": {"product": "red ball", "surface": "wooden table"}},
        {"variant_id": "can", "slots": {"product": "soda can", "surface": "marble floor"}},
    ],
}


@pytest.mark.slow  # nine renders and a re-run
def test_three_takes_have_one_best_take_per_group(ray_session, tmp_path):
    pq.write_table(pa.Table.from_pylist([BRIEF], schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    config = CampaignConfig(briefs=tmp_path / "briefs.parquet", dam=str(tmp_path / "dam"), workdir=tmp_path / "work",
                            model="tiny", device="cpu", profile="draft", batch_size=3)
    result = run_campaign(config, log=lambda line: None)

    rows = result.manifest
    assert len(rows) == 2 * 3 and all(r.status == "done" for r in rows), [r.error for r in rows]
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault(take_group(row), []).append(row)
    assert len(groups) == 2 and all(sorted(r.take for r in takes) == [0, 1, 2] for takes in groups.values())
    for takes in groups.values():
        best = [r for r in takes if r.best_take]
        assert len(best) == 1
        assert best[0].review_quality_score == max(r.review_quality_score for r in takes)
    assert all(0.0 <= r.review_quality_score <= 1.0 for r in rows)
    assert {r.variant_id for r in rows} == {"ball", "can"}
    assert all(f"/variant={r.variant_id}/" in r.keys["mp4"] for r in rows)

    # the DAM's manifest says the same, and the contact sheet groups the takes and marks the best
    dam_manifest = pq.read_table(tmp_path / "dam" / "manifest.parquet").to_pylist()
    assert sum(r["best_take"] for r in dam_manifest) == 2
    sheet = (tmp_path / "dam" / "contact_sheets" / "takes.html").read_text(encoding="utf-8")
    assert sheet.count("<span class='badge'>best take</span>") == 2
    assert sheet.count("<h2>hooks · ball · en-US · 16:9</h2>") == 1


def test_deliver_best_archives_one_take_per_group_and_keeps_the_others(ray_session, tmp_path):
    brief = {**BRIEF, "variants": BRIEF["variants"][:1]}
    pq.write_table(pa.Table.from_pylist([brief], schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    config = CampaignConfig(briefs=tmp_path / "briefs.parquet", dam=str(tmp_path / "dam"), workdir=tmp_path / "work",
                            model="tiny", device="cpu", profile="draft", batch_size=3, deliver="best")
    rows = run_campaign(config, log=lambda line: None).manifest
    assert sorted(r.status for r in rows) == ["done", "held", "held"], [(r.status, r.error) for r in rows]
    (delivered,) = [r for r in rows if r.status == "done"]
    assert delivered.best_take and delivered.review_quality_score == max(r.review_quality_score for r in rows)
    assert len(list((tmp_path / "dam").rglob("*.mp4"))) == 1
    held = {r.render_id for r in rows if r.status == "held"}
    assert {p.parent.name for p in (tmp_path / "work" / "spool").rglob("*.mp4")} == held  # kept for review

    # a re-run renders nothing: the delivered take is in the DAM, the others wait in the spool
    again = run_campaign(config, log=lambda line: None).manifest
    assert sorted(r.status for r in again) == ["held", "held", "skipped"]
    assert len(list((tmp_path / "dam").rglob("*.mp4"))) == 1
