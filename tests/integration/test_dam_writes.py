"""The DAM's read-modify-write under other writers, and a manifest that cannot be read."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from s3_server import start_s3_server

from pipeline.archive import RenderAssets, archive_render
from pipeline.dam import DAMError, open_dam
from pipeline.dam.local import LocalDAM
from pipeline.reports import MANIFEST_KEY, read_dam_manifest
from schemas.render import RenderRequest


@pytest.fixture(scope="module")
def s3_endpoint():
    with start_s3_server() as url:
        yield url


def append_line(data: bytes | None, line: str) -> bytes:
    return (data or b"") + f"{line}\n".encode()


def test_moto_honours_conditional_puts(s3_endpoint):
    """What the S3 DAM relies on, checked on the store the tests use (moto 5.2 does honour both)."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="cond")
    first = s3.put_object(Bucket="cond", Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exists:
        s3.put_object(Bucket="cond", Key="k", Body=b"2", IfNoneMatch="*")
    assert exists.value.response["Error"]["Code"] == "PreconditionFailed"
    s3.put_object(Bucket="cond", Key="k", Body=b"2", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as stale:
        s3.put_object(Bucket="cond", Key="k", Body=b"3", IfMatch=first["ETag"])
    assert stale.value.response["Error"]["Code"] == "PreconditionFailed"
    assert s3.get_object(Bucket="cond", Key="k")["Body"].read() == b"2"


def test_s3_updates_from_many_writers_keep_every_write(s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="many")

    def writer(name: str) -> None:
        dam = open_dam("s3://many/p", s3_endpoint=s3_endpoint)
        for i in range(5):
            dam.update_bytes("log.txt", lambda data: append_line(data, f"{name}-{i}"))

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = open_dam("s3://many/p", s3_endpoint=s3_endpoint).get_bytes("log.txt").decode().split()
    assert sorted(lines) == sorted(f"w{n}-{i}" for n in range(6) for i in range(5))


LOCAL_WRITER = """
import sys
from pipeline.dam.local import LocalDAM
dam = LocalDAM(sys.argv[1])
for i in range(10):
    dam.update_bytes("log.txt", lambda data: (data or b"") + f"{sys.argv[2]}-{i}\\n".encode())
"""


def test_local_updates_from_many_processes_keep_every_write(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", LOCAL_WRITER, str(tmp_path), f"p{n}"], env=env)
             for n in range(4)]
    assert [proc.wait(120) for proc in procs] == [0] * 4
    lines = (tmp_path / "log.txt").read_text().split()
    assert sorted(lines) == sorted(f"p{n}-{i}" for n in range(4) for i in range(10))
    assert not list(tmp_path.glob(".*.lock"))


def test_a_killed_jobs_lock_is_taken_over_and_a_live_one_is_waited_for(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".log.txt.lock"
    lock.write_text(f"{socket.gethostname()} {dead.pid}\n")
    dam = LocalDAM(tmp_path)
    dam.update_bytes("log.txt", lambda data: append_line(data, "after"))
    assert (tmp_path / "log.txt").read_text() == "after\n" and not lock.exists()

    lock.write_text(f"{socket.gethostname()} {os.getpid()}\n")  # held by a live process
    from pipeline.dam import local

    with pytest.raises(DAMError, match=r"\.log\.txt\.lock has been held by another job .* delete it"):
        local._LockFile(lock, dam.uri, wait_s=0.3).__enter__()


def test_an_unreadable_manifest_is_rebuilt_from_the_completion_records(tmp_path, caplog):
    request = RenderRequest.model_validate({
        "render_id": "r1", "campaign_id": "c", "brief_id": "b", "row_index": 0, "locale": "en-US",
        "language": "English", "aspect_ratio": "16:9", "resolution": "256p", "width": 448, "height": 256,
        "duration_s": 2, "seed": 1, "model_id": "tiny", "prompt": "p", "dialogue": [], "forbidden_terms": []})
    clip = tmp_path / "r1.mp4"
    clip.write_bytes(b"video")
    dam = LocalDAM(tmp_path / "dam")
    archive_render(dam, RenderAssets(**request.model_dump(include={"render_id", "campaign_id", "brief_id", "locale",
                                                                   "aspect_ratio", "model_id", "seed"}),
                                     review_status="auto_approved", files={"mp4": clip}, request=request))
    dam.put_bytes(MANIFEST_KEY, b"not parquet at all")
    with caplog.at_level(logging.WARNING):
        rows = read_dam_manifest(dam)
    assert list(rows) == ["r1"] and rows["r1"].status == "done" and rows["r1"].keys["mp4"].endswith("r1.mp4")
    assert "is not a paddock manifest" in caplog.text and "rebuilding it from the completion records" in caplog.text
