"""The campaign as a Ray Job on a local cluster, and the localization job."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.submit import campaign_entrypoint
from pipeline.dam import DAMError
from pipeline.localize import localize
from pipeline.reports import read_dam_manifest
from pipeline.run import CampaignConfig
from pipeline.dam import open_dam
from schemas.brief import BRIEF_ARROW_SCHEMA

BRIEF = {"brief_id": "hello", "campaign_id": "jobs", "prompt": "A man waves.", "source_locale": "en-US",
         "dialogue": [{"speaker": "Man", "line": "Hi!"}], "duration_s": 2, "resolution": "256p", "seed": 5}


def write_briefs(path: Path, **changes) -> Path:
    pq.write_table(pa.Table.from_pylist([{**BRIEF, **changes}], schema=BRIEF_ARROW_SCHEMA), path)
    return path


def test_campaign_as_a_ray_job(ray_session, tmp_path):
    if ray_session.job_address is None:
        pytest.skip("Ray was started outside the test session without a job server")
    briefs = write_briefs(tmp_path / "briefs.parquet")
    entrypoint = campaign_entrypoint("run_campaign", [str(briefs), "--dam", str(tmp_path / "dam"),
                                                      "--workdir", str(tmp_path / "work"), "--device", "cpu"])
    ray_cli = Path(sys.executable).with_name("ray")
    command = [str(ray_cli), "job", "submit", "--address", ray_session.job_address, "--", *entrypoint.split()]
    # The job agent comes up after the cluster: seconds on an idle machine, over a minute on a busy one.
    deadline = time.monotonic() + 240
    while True:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=420)
        if "No available agent" not in proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert "renders" in proc.stdout and "done" in proc.stdout
    rows = pq.read_table(tmp_path / "work" / "manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["done"]
    assert list((tmp_path / "dam").rglob(f"{rows[0]['render_id']}.mp4"))


def test_localize_adds_a_locale_without_rerendering_the_others(ray_session, tmp_path):
    dam = tmp_path / "dam"
    config = CampaignConfig(briefs=write_briefs(tmp_path / "briefs.parquet"), dam=str(dam),
                            workdir=tmp_path / "work", device="cpu")
    with pytest.raises(DAMError, match="no manifest.parquet"):
        localize(config, log=lambda line: None)

    from pipeline.run import run_campaign

    first = run_campaign(config, log=lambda line: None)
    (english,) = first.manifest
    english_files = {p: p.stat().st_mtime_ns for p in dam.rglob(f"{english.render_id}.*")}

    write_briefs(tmp_path / "briefs.parquet", locales=["en-US", "de-DE"],
                 localized_dialogue=[{"locale": "de-DE", "lines": [{"speaker": "Mann", "line": "Hallo!"}]}])
    logged: list[str] = []
    second = localize(config, log=logged.append)
    assert [(r.locale, r.status) for r in second.manifest] == [("de-DE", "done")]
    assert "1 of 2 renders selected" in logged
    assert {p: p.stat().st_mtime_ns for p in dam.rglob(f"{english.render_id}.*")} == english_files
    in_dam = read_dam_manifest(open_dam(str(dam)))
    assert {(r.locale, r.status) for r in in_dam.values()} == {("en-US", "done"), ("de-DE", "done")}
    assert (tmp_path / "work" / "lineage.jsonl").read_text().count('"LOCALIZATION"') == 2
