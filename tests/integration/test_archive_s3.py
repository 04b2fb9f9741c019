"""Archive stage against a real S3 endpoint over HTTP on loopback (moto's server)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import uuid
from pathlib import Path

import boto3
import pytest

from pipeline.archive import RenderAssets, archive_render, is_archived
from pipeline.dam import DAMError, open_dam
from pipeline.dam.keys import completion_key, file_sha256
from pipeline.dam.s3 import S3DAM, s3_multipart_sha256
from s3_server import S3_TEST_ENV, Fault, start_fault_proxy, start_s3_server

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_endpoint():
    with pytest.MonkeyPatch.context() as env:
        for name, value in S3_TEST_ENV.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        with start_s3_server() as url:
            yield url


@pytest.fixture
def bucket(s3_endpoint) -> str:
    name = f"paddock-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint)


def make_render(tmp_path: Path, render_id: str = "r0123abcd", sizes: dict[str, int] | None = None, **overrides) -> RenderAssets:
    sizes = sizes or {"mp4": 40_000, "wav": 20_000, "jpg": 3_000, "vtt": 200}
    files = {}
    for ext, size in sizes.items():
        path = tmp_path / f"{render_id}.{ext}"
        path.write_bytes(os.urandom(size))
        files[ext] = path
    fields = dict(
        render_id=render_id,
        campaign_id="spring-25",
        brief_id="b-001",
        locale="de-DE",
        aspect_ratio="9:16",
        model_id="magihuman-distill",
        seed=42,
        review_status="needs_review",
        files=files,
    )
    return RenderAssets(**{**fields, **overrides})


def test_render_lands_with_keys_metadata_tags_and_checksums(s3_endpoint, bucket, s3, tmp_path):
    dam = open_dam(f"s3://{bucket}/dam/v1", s3_endpoint=s3_endpoint)
    render = make_render(tmp_path)

    result = archive_render(dam, render)

    assert not result.skipped
    assert result.bytes_uploaded == sum(p.stat().st_size for p in render.files.values())
    prefix = "campaign=spring-25/brief=b-001/variant=main/locale=de-DE/9x16"
    assert result.key_prefix == prefix
    assert result.keys == {ext: f"{prefix}/r0123abcd.{ext}" for ext in ("mp4", "wav", "jpg", "vtt")}
    listed = {obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {f"dam/v1/{key}" for key in result.keys.values()} | {f"dam/v1/{prefix}/r0123abcd.done.json"}

    content_types = {"mp4": "video/mp4", "wav": "audio/wav", "jpg": "image/jpeg", "vtt": "text/vtt"}
    for ext, path in render.files.items():
        key = f"dam/v1/{result.keys[ext]}"
        digest = hashlib.sha256(path.read_bytes())
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == base64.b64encode(digest.digest()).decode()
        assert result.sha256[ext] == digest.hexdigest()
        assert head["ContentType"] == content_types[ext]
        assert head["Metadata"] == {
            "sha256": digest.hexdigest(),
            "render_id": "r0123abcd",
            "campaign": "spring-25",
            "brief": "b-001",
            "locale": "de-DE",
            "aspect_ratio": "9:16",
            "model": "magihuman-distill",
            "seed": "42",
            "variant": "main",
            "take": "0",
        }
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
        assert tags == {"review_status": "needs_review", "model": "magihuman-distill", "seed": "42"}
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()

    record = json.loads(s3.get_object(Bucket=bucket, Key=f"dam/v1/{result.completion_key}")["Body"].read())
    assert record["review_status"] == "needs_review" and record["seed"] == 42
    assert {ext: obj["sha256"] for ext, obj in record["objects"].items()} == result.sha256
    assert is_archived(dam, prefix, "r0123abcd", expected_sha256=result.sha256).model_dump(mode="json") == record


def test_second_archive_uploads_nothing(s3_endpoint, bucket, tmp_path):
    render = make_render(tmp_path)
    archive_render(open_dam(f"s3://{bucket}", s3_endpoint=s3_endpoint), render)

    # Count what actually goes over the wire on the re-run.
    with start_fault_proxy(s3_endpoint) as proxy:
        again = archive_render(open_dam(f"s3://{bucket}", s3_endpoint=proxy.url), render)

    assert again.skipped and again.bytes_uploaded == 0
    methods = [method for method, _ in proxy.forwarded]
    assert "PUT" not in methods and "POST" not in methods and "DELETE" not in methods
    assert methods.count("HEAD") >= 4  # each object's checksum was checked


def test_interrupted_render_is_redone(s3_endpoint, bucket, s3, tmp_path):
    render = make_render(tmp_path)
    with start_fault_proxy(s3_endpoint) as proxy:
        # The .vtt upload fails for good (more times than the retry budget): the job dies mid-render.
        proxy.faults.append(Fault("PUT", 500, "InternalError", times=100, path_contains=".vtt"))
        dam = S3DAM(bucket, "p", endpoint_url=proxy.url, max_attempts=2)
        with pytest.raises(DAMError, match="InternalError"):
            archive_render(dam, render)

    written = {obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert any(key.endswith(".mp4") for key in written)  # some objects made it ...
    assert not any(key.endswith(".done.json") for key in written)  # ... but no completion record
    dam = open_dam(f"s3://{bucket}/p", s3_endpoint=s3_endpoint)
    assert is_archived(dam, render.key_prefix, render.render_id) is None

    redo = archive_render(dam, render)
    assert not redo.skipped
    assert redo.bytes_uploaded == sum(p.stat().st_size for p in render.files.values())
    assert is_archived(dam, render.key_prefix, render.render_id, redo.sha256) is not None


def test_object_changed_after_completion_is_redone(s3_endpoint, bucket, s3, tmp_path):
    dam = open_dam(f"s3://{bucket}", s3_endpoint=s3_endpoint)
    render = make_render(tmp_path)
    first = archive_render(dam, render)
    s3.put_object(Bucket=bucket, Key=first.keys["wav"], Body=b"not the stem")  # overwritten behind our back

    assert is_archived(dam, first.key_prefix, render.render_id) is None
    redo = archive_render(dam, render)
    assert not redo.skipped
    assert s3.get_object(Bucket=bucket, Key=first.keys["wav"])["Body"].read() == render.files["wav"].read_bytes()


def test_new_content_for_same_render_replaces_it(s3_endpoint, bucket, tmp_path):
    dam = open_dam(f"s3://{bucket}", s3_endpoint=s3_endpoint)
    (tmp_path / "first").mkdir()
    first = archive_render(dam, make_render(tmp_path / "first"))
    second_render = make_render(tmp_path)  # same render_id, other bytes
    second = archive_render(dam, second_render)

    assert not second.skipped and second.sha256 != first.sha256
    record = is_archived(dam, second.key_prefix, second.render_id)
    assert record.sha256 == second.sha256


def test_multipart_upload_checksum(s3_endpoint, bucket, s3, tmp_path):
    # S3's minimum part size is 5 MiB; 11 MiB at a 5 MiB threshold gives 3 parts.
    dam = S3DAM(bucket, endpoint_url=s3_endpoint, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    render = make_render(tmp_path, sizes={"mp4": 11 * MiB, "vtt": 100})

    result = archive_render(dam, render)

    head = s3.head_object(Bucket=bucket, Key=result.keys["mp4"], ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # it really went multipart
    composite = s3_multipart_sha256(render.files["mp4"], 5 * MiB)
    assert head["ChecksumSHA256"].split("-")[0] == composite
    assert composite != base64.b64encode(bytes.fromhex(file_sha256(render.files["mp4"]))).decode()
    assert head["Metadata"]["sha256"] == file_sha256(render.files["mp4"]) == result.sha256["mp4"]
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=result.keys["mp4"])["TagSet"]}
    assert tags["review_status"] == "needs_review"
    assert s3.get_object(Bucket=bucket, Key=result.keys["mp4"])["Body"].read() == render.files["mp4"].read_bytes()
    assert archive_render(dam, render).skipped


def test_throttling_and_5xx_are_retried(s3_endpoint, bucket, s3, tmp_path):
    render = make_render(tmp_path)
    with start_fault_proxy(s3_endpoint) as proxy:
        # Throttle the last asset: adaptive mode rate-limits the client after a throttle, slowing what follows.
        slow_down = Fault("PUT", 503, "SlowDown", times=1, path_contains=".vtt")
        internal = Fault("PUT", 500, "InternalError", times=2, path_contains=".wav")
        proxy.faults += [slow_down, internal]
        result = archive_render(open_dam(f"s3://{bucket}", s3_endpoint=proxy.url), render)

    assert (slow_down.injected, internal.injected) == (1, 2)
    assert not result.skipped
    for ext, path in render.files.items():
        assert s3.get_object(Bucket=bucket, Key=result.keys[ext])["Body"].read() == path.read_bytes()


def test_put_bytes_and_put_file_for_manifest_and_contact_sheet(s3_endpoint, bucket, s3, tmp_path):
    dam = open_dam(f"s3://{bucket}/runs", s3_endpoint=s3_endpoint)
    html = tmp_path / "contact_sheet.html"
    html.write_text("<html><body>clips</body></html>")

    manifest = dam.put_bytes("run=1/manifest.json", b'{"rows": []}', metadata={"run": "1"})
    sheet = dam.put_file("run=1/contact_sheet.html", html)

    head = s3.head_object(Bucket=bucket, Key="runs/run=1/manifest.json", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b'{"rows": []}').digest()).decode()
    assert head["Metadata"] == {"run": "1", "sha256": manifest.sha256}
    assert head["ContentType"] == "application/json"
    assert s3.head_object(Bucket=bucket, Key="runs/run=1/contact_sheet.html")["ContentType"] == "text/html"
    assert sheet.sha256 == file_sha256(html)
    assert dam.get_bytes("run=1/manifest.json") == b'{"rows": []}'
    assert dam.get_bytes("run=1/absent.json") is None and dam.head("run=1/absent.json") is None


def test_s3_dam_survives_pickling(s3_endpoint, bucket, tmp_path):
    dam = open_dam(f"s3://{bucket}/x", s3_endpoint=s3_endpoint)
    dam.put_bytes("a.json", b"{}")
    clone = pickle.loads(pickle.dumps(dam))  # what shipping it to a worker process does
    assert clone.uri == f"s3://{bucket}/x"
    assert clone.get_bytes("a.json") == b"{}"


def test_missing_bucket_is_named(s3_endpoint):
    with pytest.raises(DAMError, match=r"bucket 'no-such-paddock-bucket' does not exist.*aws s3 mb"):
        open_dam("s3://no-such-paddock-bucket/pre", s3_endpoint=s3_endpoint)


def test_missing_credentials_say_what_to_set(s3_endpoint, bucket, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # else botocore asks the instance metadata service
    with pytest.raises(DAMError, match=rf"s3://{bucket}.*AWS_ACCESS_KEY_ID.*AWS_PROFILE"):
        open_dam(f"s3://{bucket}", s3_endpoint=s3_endpoint)


def test_completion_record_is_last(s3_endpoint, bucket, s3, tmp_path):
    # Order of PUTs on the wire: every asset before the completion record.
    render = make_render(tmp_path)
    with start_fault_proxy(s3_endpoint) as proxy:
        archive_render(open_dam(f"s3://{bucket}", s3_endpoint=proxy.url), render)
    puts = [path for method, path in proxy.forwarded if method == "PUT" and "tagging" not in path]
    assert puts[-1].split("?")[0].endswith(completion_key(render.key_prefix, render.render_id).split("/")[-1])
    assert len(puts) == 5
