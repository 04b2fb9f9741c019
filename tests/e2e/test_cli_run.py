"""`paddock run` as a user runs it: interrupted midway, then run again to finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.archive import is_archived
from pipeline.dam import open_dam
from pipeline.dam.keys import render_key_prefix
from schemas.brief import BRIEF_ARROW_SCHEMA

ROOT = Path(__file__).resolve().parents[2]

BRIEFS = [
    {"brief_id": f"clip{i}", "campaign_id": "resume", "prompt": f"Scene number {i}.", "source_locale": "en-US",
     "duration_s": 2, "resolution": "256p", "seed": i}
    for i in range(6)
]


def run_cli(tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "run", "briefs.parquet", "--dam", "dam", "--workdir", "work",
         "--device", "cpu", "--batch-size", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def done_records(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "dam").rglob("*.done.json"))


def test_interrupted_run_resumes_without_duplicates(tmp_path):
    pq.write_table(pa.Table.from_pylist(BRIEFS, schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    first = run_cli(tmp_path)
    deadline = time.monotonic() + 240
    while not done_records(tmp_path) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert done_records(tmp_path), first.communicate()[0] if first.poll() is not None else "no render finished in time"
    os.killpg(first.pid, signal.SIGKILL)  # the whole job, Ray workers included
    first.wait()
    finished_before = {p.name for p in done_records(tmp_path)}
    assert 1 <= len(finished_before) < 6
    mtimes = {p.name: p.stat().st_mtime_ns for p in done_records(tmp_path)}

    second = run_cli(tmp_path)
    output, _ = second.communicate(timeout=400)
    assert second.returncode == 0, output
    assert f"{len(finished_before)} renders already in" in output
    manifest = pq.read_table(tmp_path / "work" / "manifest.parquet").to_pylist()
    assert len(manifest) == 6 and len({r["render_id"] for r in manifest}) == 6
    skipped = {f"{r['render_id']}.done.json" for r in manifest if r["status"] == "skipped"}
    assert skipped == finished_before
    assert {r["status"] for r in manifest} <= {"done", "skipped"}
    # Every render archived exactly once: one record each, untouched for the ones done before.
    assert len(done_records(tmp_path)) == 6
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in done_records(tmp_path) if p.name in mtimes)
    assert len(list((tmp_path / "dam").rglob("*.mp4"))) == 6
    # Whatever the kill cut off (at most a hidden .part file) never stands under a final name:
    # every render's objects match its completion record.
    dam = open_dam(str(tmp_path / "dam"))
    for row in manifest:
        prefix = render_key_prefix(row["campaign_id"], row["brief_id"], row["locale"], row["aspect_ratio"],
                                   row["variant_id"])
        assert is_archived(dam, prefix, row["render_id"]) is not None
    assert "contact sheet:" in output
    # the CLI's output is paddock's own: Ray's and torch's start-up noise stays out of it
    for noise in ("Token authentication", "Progress bars disabled", "constructor arguments", "FutureWarning"):
        assert noise not in output, noise
