"""A batch that kills its render process is retried a bounded number of times, then becomes failed rows."""

from __future__ import annotations

import time

from ray import cloudpickle
import crashing_generator
import pyarrow as pa
import pyarrow.parquet as pq

import pipeline.run
from pipeline.run import STAGE_RETRIES, CampaignConfig, run_campaign
from schemas.brief import BRIEF_ARROW_SCHEMA


def test_a_batch_that_kills_its_process_ends_as_failed_rows_with_the_reason(ray_session, tmp_path, monkeypatch):
    cloudpickle.register_pickle_by_value(crashing_generator)  # the Ray workers do not have tests/ on their path
    monkeypatch.setattr(pipeline.run, "replica_factory", crashing_generator.crashing_factory)
    briefs = [{"brief_id": name, "campaign_id": "crash", "prompt": prompt, "source_locale": "en-US", "duration_s": 2,
               "resolution": "256p", "seed": 1} for name, prompt in (("fine", "A calm lake."), ("boom", "CRASH now."))]
    pq.write_table(pa.Table.from_pylist(briefs, schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    config = CampaignConfig(briefs=tmp_path / "briefs.parquet", dam=str(tmp_path / "dam"), workdir=tmp_path / "work",
                            model="tiny", device="cpu", profile="draft", batch_size=1)
    started = time.monotonic()
    result = run_campaign(config, log=lambda line: None)
    by_brief = {row.brief_id: row for row in result.manifest}
    assert by_brief["boom"].status == "failed"
    assert f"stopped after {STAGE_RETRIES} retries: ActorDiedError" in by_brief["boom"].error
    # The clip before the crash is archived; one the stage never reached fails with the same reason.
    assert by_brief["fine"].status == "done" or "not rendered" in by_brief["fine"].error
    assert time.monotonic() - started < 300  # bounded: not a reload loop until the job's deadline
    in_dam = pq.read_table(tmp_path / "dam" / "manifest.parquet").to_pylist()
    assert {row["brief_id"]: row["status"] for row in in_dam} == {b: r.status for b, r in by_brief.items()}
