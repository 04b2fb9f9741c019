"""`paddock doctor` as a user runs it: all rows pass on a good setup; each broken piece fails its row with the fix."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from s3_server import start_s3_server

ROOT = Path(__file__).resolve().parents[2]


def doctor(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    environ.pop("RAY_ADDRESS", None)
    environ.pop("OPENLINEAGE_URL", None)
    return subprocess.run([sys.executable, "-m", "jobs.cli", "doctor", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=180)


def rows(output: str) -> dict[str, tuple[str, str]]:
    """check name -> (status, found, with its fix line when there is one)."""
    table: dict[str, tuple[str, str]] = {}
    last = None
    for line in output.splitlines()[1:]:
        if line.strip().startswith("fix:") and last:
            table[last] = (table[last][0], table[last][1] + " | " + line.strip())
            continue
        for status in ("ok", "note", "FAIL"):
            marker = f"  {status} "
            if marker in line:
                name, found = line.split(marker, 1)
                last = name.strip()
                table[last] = (status, found.strip())
                break
    return table


def write_safetensors(path: Path, dtype: str = "BF16") -> None:
    """A one-tensor safetensors file, written byte by byte as the format lays it out."""
    header = json.dumps({"w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 4]}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def test_all_rows_pass_on_a_good_setup(tmp_path):
    proc = doctor("--dam", str(tmp_path / "dam"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = rows(proc.stdout)
    assert {"ffmpeg", "torch / CUDA", "Ray", "model", "DAM", "lineage"} <= set(table)
    assert all(status in ("ok", "note") for status, _ in table.values()), table
    assert "libx264" in table["ffmpeg"][1]
    assert table["torch / CUDA"][0] in ("ok", "note")  # no GPU is a note for the tiny model
    assert "probe object" in table["DAM"][1]
    assert not list((tmp_path / "dam").rglob("*.txt")), "the probe object is deleted"


def test_s3_dam_passes_and_an_unreachable_endpoint_fails(tmp_path):
    import boto3

    with start_s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="doctor")
        good = doctor("--dam", "s3://doctor/campaigns", "--s3-endpoint", endpoint, cwd=tmp_path)
        assert good.returncode == 0, good.stdout + good.stderr
        assert rows(good.stdout)["DAM"][0] == "ok"
        left = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="doctor").get("KeyCount", 0)
        assert left == 0, "the probe object is deleted"
    down = doctor("--dam", "s3://doctor/campaigns", "--s3-endpoint", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert down.returncode == 1
    status, found = rows(down.stdout)["DAM"]
    assert status == "FAIL" and "cannot reach the S3 endpoint" in found and "fix:" in found


def test_a_missing_checkpoint_folder_fails_its_row(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    write_safetensors(checkpoints / "distill" / "model.safetensors", "F32")
    write_safetensors(checkpoints / "t5gemma-9b-9b-ul2" / "model.safetensors", "BF16")
    proc = doctor("--model", "magihuman-distill", "--device", "cpu", "--checkpoint-dir", str(checkpoints),
                  "--dam", str(tmp_path / "dam"), cwd=tmp_path)
    assert proc.returncode == 1
    table = rows(proc.stdout)
    assert table["model: dit"][0] == "ok" and "F32" in table["model: dit"][1]
    assert table["model: text_encoder"][0] == "ok" and "BF16" in table["model: text_encoder"][1]
    status, found = table["model: sr_540p"]
    assert status == "FAIL" and "540p_sr is missing" in found and "fix: download it into" in found


def test_an_ffmpeg_without_libx264_fails_its_row(tmp_path):
    stub = tmp_path / "ffmpeg"
    stub.write_text('#!/bin/sh\necho "ffmpeg version 6.1-stub Copyright (c) the FFmpeg developers"\n')
    stub.chmod(0o755)
    proc = doctor("--dam", str(tmp_path / "dam"), cwd=tmp_path, PADDOCK_FFMPEG=str(stub))
    assert proc.returncode == 1
    status, found = rows(proc.stdout)["ffmpeg"]
    assert status == "FAIL" and "lacks the libx264 encoder" in found and "PADDOCK_FFMPEG" in found


def test_a_read_only_dam_prefix_fails_its_row(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    # root writes through file modes, so the prefix is a read-only file system (a tmpfs mounted ro)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a read-only tmpfs: {mounted.stderr}")
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        proc = doctor("--dam", str(read_only / "campaigns"), cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert proc.returncode == 1
    status, found = rows(proc.stdout)["DAM"]
    assert status == "FAIL" and "cannot write" in found and "writable" in found


def test_memory_table_of_the_full_size_model_at_tp4_needs_no_weights(tmp_path):
    """From the architecture alone: one `rank N  weights X.X GB` line per rank; rank 0 carries the
    text encoder (the T5Gemma 9B encoder, about 18.5 GB in bf16) and the DiT slices are a quarter of
    the 15B DiTs; --text-encoder-device cpu moves the encoder off rank 0's GPU."""
    import re

    out = doctor("--model", "magihuman-distill", "--tp", "4", "--dam", str(tmp_path / "dam"), cwd=tmp_path).stdout
    weights = {int(m[1]): float(m[2]) for m in re.finditer(r"^rank (\d+)  weights (\d+\.\d) GB", out, re.M)}
    assert sorted(weights) == [0, 1, 2, 3]
    assert weights[1] == weights[2] == weights[3]
    assert 18.0 < weights[0] - weights[1] < 19.0
    dit = float(re.search(r"^rank 1  weights .*\(dit (\d+\.\d+)", out, re.M)[1])
    assert 7.0 < dit < 8.5  # about 15.4e9 parameters in bf16, a quarter per rank
    assert re.search(r"^1080p\s+15 s .* 80 141$", out, re.M)
    assert rows(out)["memory"][0] == "ok"

    cpu = doctor("--model", "magihuman-distill", "--tp", "4", "--text-encoder-device", "cpu", "--dam",
                 str(tmp_path / "dam"), cwd=tmp_path).stdout
    on_host = {int(m[1]): float(m[2]) for m in re.finditer(r"^rank (\d+)  weights (\d+\.\d) GB", cpu, re.M)}
    assert on_host[0] == on_host[1] == weights[1]
    assert "on the host: text_encoder" in cpu
