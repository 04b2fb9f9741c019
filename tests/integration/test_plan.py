"""ingest + expand through Ray Data on a real local Ray instance."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.run import plan, write_plan
from schemas.brief import BRIEF_ARROW_SCHEMA
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA


def write_briefs(path, rows):
    pq.write_table(pa.Table.from_pylist(rows, schema=BRIEF_ARROW_SCHEMA), path)
    return path


def test_plan_splits_requests_and_rejects(ray_session, tmp_path):
    rows = [
        {"brief_id": "a", "campaign_id": "c", "prompt": "Scene A.", "source_locale": "en-US",
         "locales": ["en-US", "es-ES"], "aspect_ratios": ["16:9", "1:1"], "variants": 2},
        {"brief_id": "b", "campaign_id": "c", "prompt": "Scene B.", "source_locale": "de-DE", "duration_s": 30},
        {"brief_id": "a", "campaign_id": "c", "prompt": "Again.", "source_locale": "en-US"},
        {"brief_id": "d", "campaign_id": "c", "prompt": "Scene D.", "source_locale": "ko-KR"},
    ]
    result = plan(write_briefs(tmp_path / "briefs.parquet", rows), model_id="tiny")
    assert (result.briefs_read, result.briefs_valid) == (4, 2)
    assert result.requests.schema == RENDER_REQUEST_ARROW_SCHEMA
    assert result.requests.num_rows == 2 * 2 + 1
    assert sorted(result.rejects.column("row_index").to_pylist()) == [0, 1, 2]
    assert result.reject_reasons == {
        "locales: unsupported language": 1,
        "duration_s: Input should be less than or equal to 15": 1,
        "brief_id: duplicate": 1,
    }

    requests_path, rejects_path = write_plan(result, tmp_path / "out")
    assert pq.read_table(requests_path).num_rows == 5
    assert pq.read_table(rejects_path).column_names == ["row_index", "brief_id", "locale", "reason", "raw"]

    again = plan(tmp_path / "briefs.parquet", model_id="tiny")
    assert again.requests.column("render_id").to_pylist() == result.requests.column("render_id").to_pylist()


def test_plan_keeps_input_order_across_blocks(ray_session, tmp_path, monkeypatch):
    import pipeline.run

    monkeypatch.setattr(pipeline.run, "PLAN_BLOCK_ROWS", 7)
    rows = [{"brief_id": f"b{i:03d}", "campaign_id": "c", "prompt": f"Scene {i}.", "source_locale": "en-US"}
            for i in range(40)]
    result = plan(write_briefs(tmp_path / "briefs.parquet", rows), model_id="tiny")
    assert result.requests.column("row_index").to_pylist() == list(range(40))
    assert result.requests.column("brief_id").to_pylist() == [r["brief_id"] for r in rows]
