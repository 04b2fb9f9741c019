"""`paddock run` stopped part-way, then run to the end: nothing made twice, nothing missing, no
failed row for a clip that is complete. SIGKILL during render, during archive and during the
manifest merge; SIGTERM (`ray job stop`, a pod's eviction) merges the rows so far into the DAM's
manifest before the driver exits."""

from __future__ import annotations

import os
import signal
import socket

import pyarrow.parquet as pq
from cli_runs import CliRun, records, stop_when, write_briefs

from pipeline.dam import open_dam
from pipeline.reports import read_dam_manifest, rows_from_records

RENDERS = 6


def test_killed_at_several_points_then_finished_nothing_twice_nothing_missing(tmp_path):
    write_briefs(tmp_path, RENDERS, "kill")
    seen: dict[str, int] = {}
    spool = tmp_path / "work" / "spool"

    def new_record() -> bool:
        return bool(set(records(tmp_path)) - set(seen))

    # 1: during render (a clip is archived, the next is being made)
    assert stop_when(CliRun(tmp_path), new_record)[0]
    seen.update(records(tmp_path))
    # 2: during archive (a finished clip's files are in the spool)
    stop_when(CliRun(tmp_path), lambda: spool.is_dir() and any(spool.iterdir()))
    seen.update(records(tmp_path))
    # 3: during the manifest merge. This test holds the DAM manifest's lock, so the run's merge
    # waits; once the driver has recorded every render it said it would, that merge is all it
    # has left. Killed there, it leaves its lock behind, owned by a process that is gone.
    lock = tmp_path / "dam" / ".manifest.parquet.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}\n")
    run = CliRun(tmp_path)
    assert run.wait_for_recorded(), run.output
    assert stop_when(run, lambda: True)[0]
    made_here = {brief_id for brief_id, _ in run.recorded}
    assert not made_here & {row.brief_id for row in read_dam_manifest(open_dam(str(tmp_path / "dam"))).values()}
    lock.write_text(f"{socket.gethostname()} {run.proc.pid}\n")
    seen.update(records(tmp_path))

    last = CliRun(tmp_path)
    assert last.finish() == 0, last.output
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


def test_sigterm_merges_the_archived_renders_into_the_dams_manifest_and_the_next_run_makes_none_again(tmp_path):
    briefs = write_briefs(tmp_path, 3, "term")
    dam_dir = tmp_path / "dam"
    run = CliRun(tmp_path)
    # The driver has recorded a finished render (its row waits in the merger: 16 rows or 60 s
    # between merges), and two more are still to make: the job is mid-run when SIGTERM lands.
    assert run.wait_for_recorded(1), run.output
    assert run.proc.poll() is None
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(180) == 128 + signal.SIGTERM, run.output  # merge_on_sigterm's exit, after its merge
    recorded = {brief_id for brief_id, status in run.recorded if status == "done"}
    assert recorded and len(recorded) < len(briefs), run.output
    dam = open_dam(str(dam_dir))
    in_dam = read_dam_manifest(dam)
    assert recorded <= {row.brief_id for row in in_dam.values() if row.status == "done"}
    assert set(in_dam) <= set(rows_from_records(dam))  # no row claims a render the DAM does not hold
    made_before = records(tmp_path)

    follow_up = CliRun(tmp_path)
    assert follow_up.finish() == 0, follow_up.output
    final = records(tmp_path)
    assert len(final) == len(briefs)
    assert all(final[name] == mtime for name, mtime in made_before.items()), "a finished render was made again"
    assert sum(status == "done" for _, status in follow_up.recorded) == len(briefs) - len(made_before)
    in_dam = read_dam_manifest(dam)
    assert {row.brief_id for row in in_dam.values()} == set(briefs)
    assert {row.status for row in in_dam.values()} <= {"done", "skipped"}
