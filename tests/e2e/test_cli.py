"""The `paddock` CLI as a user runs it: a subprocess, its exit code and what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]


def paddock(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_plan_example_campaign(tmp_path):
    proc = paddock("plan", str(ROOT / "examples" / "briefs.parquet"), "--out", str(tmp_path / "plan"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 briefs read, 3 valid, 9 render requests, 0 rejects" in proc.stdout
    # the fan-out per brief: variants x locales x aspects x takes, and the clip-seconds to render
    assert "spokesperson-hero: 1 x 3 x 2 x 1 = 6 renders, 18 s" in proc.stdout
    assert "product-closeup: 1 x 1 x 1 x 2 = 2 renders, 4 s" in proc.stdout
    assert "total: 9 renders, 24 clip-seconds" in proc.stdout
    requests = pq.read_table(tmp_path / "plan" / "requests.parquet")
    assert requests.num_rows == 9
    assert set(requests.column("language").to_pylist()) == {"English", "German", "Japanese", "French"}
    assert pq.read_table(tmp_path / "plan" / "rejects.parquet").num_rows == 0


def test_missing_file(tmp_path):
    proc = paddock("plan", "nope.parquet", "--out", "out", cwd=tmp_path)
    assert_one_line_error(proc, "nope.parquet", "no such file")


def test_not_parquet(tmp_path):
    (tmp_path / "briefs.parquet").write_text("brief_id,prompt\nb1,hello\n")
    proc = paddock("plan", "briefs.parquet", "--out", "out", cwd=tmp_path)
    assert_one_line_error(proc, "briefs.parquet", "not a readable Parquet file")


def test_no_required_columns(tmp_path):
    pq.write_table(pa.table({"title": ["x"], "body": ["y"]}), tmp_path / "other.parquet")
    proc = paddock("plan", "other.parquet", "--out", "out", cwd=tmp_path)
    assert_one_line_error(proc, "other.parquet", "none of the required columns", "brief_id")


def test_directory_given(tmp_path):
    proc = paddock("plan", str(tmp_path), "--out", "out", cwd=tmp_path)
    assert_one_line_error(proc, "is a directory")


def test_unwritable_output(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should go")
    proc = paddock("plan", str(ROOT / "examples" / "briefs.parquet"), "--out", "blocker/plan", cwd=tmp_path)
    assert_one_line_error(proc, "blocker")


def test_generate_one_clip_by_hand(tmp_path):
    import av

    proc = paddock("generate", "--prompt", "A dog barks twice.", "--seconds", "2", "--aspect", "9:16",
                   "--device", "cpu", "--out", "clips/dog.mp4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote clips/dog.mp4: 50 frames 256x448" in proc.stdout
    with av.open(str(tmp_path / "clips" / "dog.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 256, 448)
        assert (audio.codec_context.name, audio.rate) == ("aac", 48000)
        # exactly the 2 s asked for: 50 frames at 25 fps, and 2 s of audio to within one AAC frame
        assert video.average_rate == 25
        assert float(video.duration * video.time_base) == pytest.approx(2.0, abs=1e-6)
        assert float(audio.duration * audio.time_base) == pytest.approx(2.0, abs=1024 / 48000)
        assert sum(1 for _ in container.decode(video=0)) == 50
    assert [p.name for p in (tmp_path / "clips").iterdir()] == ["dog.mp4"]  # no scratch files left


def test_generate_rejects_a_non_mp4_output(tmp_path):
    proc = paddock("generate", "--prompt", "x", "--out", "clip.mov", cwd=tmp_path)
    assert_one_line_error(proc, "--out clip.mov", ".mp4")


def test_serve_refuses_to_start_without_a_token(tmp_path):
    proc = paddock("serve", "--dam", "dam", cwd=tmp_path)
    assert_one_line_error(proc, "PADDOCK_API_TOKEN is not set", "--insecure-local")


def test_serve_insecure_local_binds_loopback_only(tmp_path):
    proc = paddock("serve", "--insecure-local", "--host", "0.0.0.0", cwd=tmp_path)
    assert_one_line_error(proc, "loopback only", "0.0.0.0")


def test_review_refuses_to_start_without_a_token_or_insecure_wide(tmp_path):
    proc = paddock("review", "--dam", "dam", cwd=tmp_path)
    assert_one_line_error(proc, "PADDOCK_API_TOKEN is not set", "--insecure-local")
    proc = paddock("review", "--dam", "dam", "--insecure-local", "--host", "0.0.0.0", cwd=tmp_path)
    assert_one_line_error(proc, "loopback only", "0.0.0.0")


def test_run_with_a_model_it_cannot_build_is_one_clear_error(tmp_path):
    proc = paddock("run", str(ROOT / "examples" / "briefs.parquet"), "--model", "magihuman-distill",
                   "--checkpoint-dir", "weights", "--dam", "dam", "--workdir", "work", cwd=tmp_path)
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("paddock run: error: --model magihuman-distill:") and "weights/distill" in last


def test_run_on_gpus_this_machine_lacks_is_one_clear_error(tmp_path):
    proc = paddock("run", str(ROOT / "examples" / "briefs.parquet"), "--device", "cuda", "--dam", "dam",
                   "--workdir", "work", cwd=tmp_path)
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--device cuda: this Ray has 0 GPUs and a replica needs 1" in last
