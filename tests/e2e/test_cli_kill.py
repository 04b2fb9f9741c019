"""`paddock run` killed (SIGKILL) during render, during archive and during the manifest merge,
then run to the end: nothing made twice, nothing missing, no failed row for a clip that is complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dam import open_dam
from pipeline.reports import read_dam_manifest, rows_from_records
from schemas.brief import BRIEF_ARROW_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
RENDERS = 6
BRIEFS = [{"brief_id": f"k{i}", "campaign_id": "kill", "prompt": f"Scene {i} of the kill test.",
           "source_locale": "en-US", "duration_s": 2, "resolution": "256p", "seed": i} for i in range(RENDERS)]


def start(tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "run", "briefs.parquet", "--dam", "dam", "--workdir", "work",
         "--device", "cpu", "--batch-size", "1", "--profile", "draft"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def records(tmp_path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dam").rglob("*.done.json")}


def stop_when(proc: subprocess.Popen, ready, sig: int = signal.SIGKILL, timeout_s: float = 300) -> tuple[bool, str]:
    """Once ``ready()``, SIGKILL the whole job (Ray's processes too), or send another signal to
    the driver alone, as `ray job stop` or a pod's eviction does: whether it was sent (False:
    the job ended first), and the job's output. Whatever the job left running is killed after."""
    deadline = time.monotonic() + timeout_s
    sent = False
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(proc.pid, sig) if sig == signal.SIGKILL else os.kill(proc.pid, sig)
            sent = True
            break
        time.sleep(0.01)
    output = proc.communicate(timeout=180)[0]
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return sent, output


def test_killed_at_several_points_then_finished_nothing_twice_nothing_missing(tmp_path):
    pq.write_table(pa.Table.from_pylist(BRIEFS, schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    seen: dict[str, int] = {}
    spool = tmp_path / "work" / "spool"

    def new_record() -> bool:
        return bool(set(records(tmp_path)) - set(seen))

    # 1: during render (a clip is archived, the next is being made)
    assert stop_when(start(tmp_path), new_record)[0]
    seen.update(records(tmp_path))
    # 2: during archive (a finished clip's files are in the spool)
    stop_when(start(tmp_path), lambda: spool.is_dir() and any(spool.iterdir()))
    seen.update(records(tmp_path))
    # 3: during the manifest merge (its lock file is held)
    stop_when(start(tmp_path), lambda: (tmp_path / "dam" / ".manifest.parquet.lock").exists())
    seen.update(records(tmp_path))

    last = start(tmp_path)
    output, _ = last.communicate(timeout=600)
    assert last.returncode == 0, output
    final = records(tmp_path)
    assert len(final) == RENDERS
    # made once: a record, once written, is never written again
    assert all(final[name] == mtime for name, mtime in seen.items()), "a finished render was made again"
    assert len(list((tmp_path / "dam").rglob("*.mp4"))) == RENDERS
    manifest = pq.read_table(tmp_path / "work" / "manifest.parquet").to_pylist()
    assert sorted(r["status"] for r in manifest if r["status"] not in ("done", "skipped")) == []
    dam = open_dam(str(tmp_path / "dam"))
    in_dam = read_dam_manifest(dam)
    assert len(in_dam) == RENDERS and {r.status for r in in_dam.values()} <= {"done", "skipped"}
    assert set(in_dam) == set(rows_from_records(dam))
    assert not (spool.is_dir() and any(spool.iterdir()))
