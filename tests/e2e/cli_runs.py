"""`paddock run` as a subprocess on a small campaign, for the tests that stop it part-way
(tests/e2e/test_cli_kill.py: SIGKILL, and SIGTERM's manifest merge)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.brief import BRIEF_ARROW_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
# The driver's line for each render it recorded (pipeline.run's record(): the row is in its manifest merger).
RECORDED_LINE = re.compile(r"^\[\d+/\d+\] (?P<brief_id>\S+) .*?: (?P<status>\w+)")
# Its line before the work: how many renders it will record.
TO_DO_LINE = re.compile(r"(?P<spooled>\d+) to archive from .*, (?P<redeliver>\d+) to re-deliver as \S+, "
                        r"(?P<todo>\d+) to make")


def write_briefs(tmp_path: Path, renders: int, campaign_id: str) -> list[str]:
    """One 2 s 256p render per brief; returns the brief ids."""
    briefs = [{"brief_id": f"{campaign_id[0]}{i}", "campaign_id": campaign_id,
               "prompt": f"Scene {i} of the {campaign_id} test.", "source_locale": "en-US", "duration_s": 2, "resolution": "256p", "seed": i} for i in range(renders)]
    pq.write_table(pa.Table.from_pylist(briefs, schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    return [b["brief_id"] for b in briefs]


class CliRun:
    """One `paddock run` of <tmp_path>/briefs.parquet into <tmp_path>/dam, its output read as it comes."""

    def __init__(self, tmp_path: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}  # each line as it is printed
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "run", "briefs.parquet", "--dam", "dam", "--workdir", "work",
             "--device", "cpu", "--batch-size", "1", "--profile", "draft"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.lines: list[str] = []
        self.recorded: list[tuple[str, str]] = []  # (brief_id, status) in the order the driver recorded them
        self.to_record: int | None = None  # what the driver said it will record
        self.changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                if match := RECORDED_LINE.match(line):
                    self.recorded.append((match["brief_id"], match["status"]))
                elif match := TO_DO_LINE.search(line):
                    self.to_record = sum(int(match[name]) for name in ("spooled", "redeliver", "todo"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_recorded(self, count: int | None = None, timeout_s: float = 300) -> bool:
        """Until the driver has recorded ``count`` renders, by default every one it said it would
        (True), or the job ended (False)."""
        def reached() -> bool:
            wanted = count if count is not None else self.to_record
            return wanted is not None and len(self.recorded) >= wanted

        with self.changed:
            return self.changed.wait_for(lambda: reached() or not self._reader.is_alive(), timeout_s) and reached()

    def finish(self, timeout_s: float = 600) -> int:
        """The job's exit status once it ends; whatever it left running is killed after."""
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._reader.join(30)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def records(tmp_path: Path) -> dict[str, int]:
    """The DAM's completion records (written last, once per render made): name -> mtime."""
    return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dam").rglob("*.done.json")}


def stop_when(run: CliRun, ready, sig: int = signal.SIGKILL, timeout_s: float = 300) -> tuple[bool, str]:
    """Once ``ready()``, SIGKILL the whole job (Ray's processes too), or send another signal to
    the driver alone, as `ray job stop` or a pod's eviction does: whether it was sent (False:
    the job ended first), and the job's output. Whatever the job left running is killed after."""
    deadline = time.monotonic() + timeout_s
    sent = False
    while run.proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(run.proc.pid, sig) if sig == signal.SIGKILL else os.kill(run.proc.pid, sig)
            sent = True
            break
        time.sleep(0.01)
    run.finish(180)
    return sent, run.output
