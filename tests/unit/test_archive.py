"""Archive stage: key layout, DAM URIs, and the local-directory DAM end to end."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.archive import RenderAssets, archive_render, find_archived, is_archived
from pipeline.dam import DAMError, open_dam
from pipeline.dam.keys import aspect_key, completion_key, render_key, render_key_prefix
from pipeline.dam.local import LocalDAM
from pipeline.dam.s3 import S3DAM, s3_multipart_sha256
from schemas.render import RenderRequest


def make_render(folder: Path, render_id: str = "9f3c2a", **overrides) -> RenderAssets:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for ext, size in {"mp4": 5000, "wav": 3000, "jpg": 800, "vtt": 120}.items():
        files[ext] = folder / f"clip.{ext}"
        files[ext].write_bytes(os.urandom(size))
    fields = dict(
        render_id=render_id,
        campaign_id="c1",
        brief_id="b1",
        locale="pt-BR",
        aspect_ratio="16:9",
        model_id="magihuman-tiny",
        seed=7,
        review_status="auto_approved",
        files=files,
    )
    return RenderAssets(**{**fields, **overrides})


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("aspect, key", [("16:9", "16x9"), ("9:16", "9x16"), ("1:1", "1x1"), ("4:3", "4x3")])
def test_aspect_key(aspect, key):
    assert aspect_key(aspect) == key


@pytest.mark.parametrize("aspect", ["16/9", "16x9", "0:1", ":9", "16:9:1", ""])
def test_aspect_key_rejects_malformed(aspect):
    with pytest.raises(ValueError, match="aspect_ratio"):
        aspect_key(aspect)


def test_key_layout():
    assert (render_key_prefix("spring", "b-7", "de-DE", "9:16")
            == "campaign=spring/brief=b-7/variant=main/locale=de-DE/9x16")
    assert (render_key_prefix("spring", "b-7", "de-DE", "9:16", "hook-b")
            == "campaign=spring/brief=b-7/variant=hook-b/locale=de-DE/9x16")
    # the layout before creative variants, which older DAMs still hold
    assert render_key_prefix("spring", "b-7", "de-DE", "9:16", None) == "campaign=spring/brief=b-7/locale=de-DE/9x16"
    assert (render_key("spring", "b-7", "de-DE", "9:16", "abc123", "mp4", "hook-b")
            == "campaign=spring/brief=b-7/variant=hook-b/locale=de-DE/9x16/abc123.mp4")
    assert completion_key("campaign=spring/brief=b-7/locale=de-DE/9x16", "abc123").endswith("/abc123.done.json")


@pytest.mark.parametrize(
    "field, args",
    [
        ("campaign_id", ("a/b", "b", "en-US", "1:1")),
        ("brief_id", ("c", "..", "en-US", "1:1")),
        ("locale", ("c", "b", "", "1:1")),
        ("brief_id", ("c", "b c", "en-US", "1:1")),
    ],
)
def test_key_rejects_unsafe_segments(field, args):
    with pytest.raises(ValueError, match=field):
        render_key_prefix(*args)


def test_render_key_rejects_bad_ext():
    with pytest.raises(ValueError, match="ext="):
        render_key("c", "b", "en-US", "1:1", "r", ".mp4")


def test_s3_multipart_sha256_is_hash_of_part_hashes(tmp_path):
    data = os.urandom(2500)
    path = tmp_path / "blob"
    path.write_bytes(data)
    parts = [data[0:1000], data[1000:2000], data[2000:]]
    expected = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    assert s3_multipart_sha256(path, 1000) == base64.b64encode(expected).decode()


# --------------------------------------------------------------------------- URIs


def test_open_dam_local_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_dam(), LocalDAM) and open_dam().root == tmp_path / "dam"
    assert open_dam(str(tmp_path / "x")).root == tmp_path / "x"
    assert open_dam(f"file://{tmp_path}/y").root == tmp_path / "y"
    assert open_dam(tmp_path / "z").uri == (tmp_path / "z").as_uri()


def test_open_dam_s3_parses_bucket_and_prefix():
    dam = open_dam("s3://my-bucket/deliveries/2025/", s3_endpoint="http://127.0.0.1:9", check_bucket=False)
    assert isinstance(dam, S3DAM)
    assert (dam.bucket, dam.prefix, dam.endpoint_url) == ("my-bucket", "deliveries/2025", "http://127.0.0.1:9")
    assert dam.uri == "s3://my-bucket/deliveries/2025"


@pytest.mark.parametrize(
    "uri, kwargs, message",
    [
        ("gs://bucket/x", {}, "unsupported scheme 'gs'"),
        ("file://host/x", {}, "file:///abs/path"),
        ("./dam", {"s3_endpoint": "http://127.0.0.1:9"}, "apply only to s3://"),
        ("s3:///prefix", {"check_bucket": False}, "needs a bucket"),
    ],
)
def test_open_dam_errors_name_the_fix(uri, kwargs, message):
    with pytest.raises(DAMError, match=message):
        open_dam(uri, **kwargs)


def test_local_dam_root_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DAMError, match="not a directory"):
        LocalDAM(tmp_path / "file")


def test_local_dam_rejects_keys_escaping_root(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    for key in ("../outside.txt", "/abs.txt", "a//b", "a/./b"):
        with pytest.raises(ValueError, match="DAM key"):
            dam.put_bytes(key, b"x")
    assert not (tmp_path / "outside.txt").exists()


# --------------------------------------------------------------------------- render model


def test_render_assets_checks_files(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        make_render(tmp_path, files={"mp4": tmp_path / "missing.mp4"})
    with pytest.raises(ValidationError, match="files is empty"):
        make_render(tmp_path, files={})
    with pytest.raises(ValidationError, match="review_status"):
        make_render(tmp_path, review_status="approved")


# --------------------------------------------------------------------------- local DAM, whole renders


def test_local_archive_writes_layout_and_record(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    render = make_render(tmp_path / "work")

    result = archive_render(dam, render)

    folder = tmp_path / "dam" / "campaign=c1" / "brief=b1" / "variant=main" / "locale=pt-BR" / "16x9"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["9f3c2a.mp4", "9f3c2a.wav", "9f3c2a.jpg", "9f3c2a.vtt", "9f3c2a.done.json"]
    )
    for ext, path in render.files.items():
        assert (folder / f"9f3c2a.{ext}").read_bytes() == path.read_bytes()
        assert result.sha256[ext] == hashlib.sha256(path.read_bytes()).hexdigest()
    record = json.loads((folder / "9f3c2a.done.json").read_text())
    assert record["review_status"] == "auto_approved" and record["model_id"] == "magihuman-tiny"
    assert record["seed"] == 7 and record["locale"] == "pt-BR" and record["aspect_ratio"] == "16:9"
    assert {ext: o["sha256"] for ext, o in record["objects"].items()} == result.sha256
    assert result.bytes_uploaded == sum(p.stat().st_size for p in render.files.values())
    assert not result.skipped and result.dam_uri == (tmp_path / "dam").as_uri()
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_local_rearchive_skips_and_writes_nothing(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    render = make_render(tmp_path / "work")
    first = archive_render(dam, render)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "dam").rglob("*") if p.is_file()}

    again = archive_render(dam, render)

    assert again.skipped and again.bytes_uploaded == 0 and again.keys == first.keys
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "dam").rglob("*") if p.is_file()} == mtimes


def test_local_interrupted_render_is_redone(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    render = make_render(tmp_path / "work")
    # What a job killed mid-render leaves: two assets, no completion record.
    dam.put_file(render.key("mp4"), render.files["mp4"])
    dam.put_file(render.key("wav"), render.files["wav"])
    assert is_archived(dam, render.key_prefix, render.render_id) is None

    result = archive_render(dam, render)

    assert not result.skipped
    assert is_archived(dam, render.key_prefix, render.render_id, expected_sha256=result.sha256) is not None


def test_local_corrupted_object_makes_render_not_archived(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    render = make_render(tmp_path / "work")
    result = archive_render(dam, render)
    jpg = tmp_path / "dam" / result.keys["jpg"]
    jpg.write_bytes(b"\xff" * jpg.stat().st_size)  # same size, other bytes

    assert is_archived(dam, result.key_prefix, render.render_id) is None
    redo = archive_render(dam, render)
    assert not redo.skipped and jpg.read_bytes() == render.files["jpg"].read_bytes()


def test_is_archived_with_other_expected_checksums_is_none(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    render = make_render(tmp_path / "work")
    result = archive_render(dam, render)
    assert is_archived(dam, result.key_prefix, render.render_id, {**result.sha256, "mp4": "0" * 64}) is None
    assert is_archived(dam, result.key_prefix, render.render_id, {"mp4": result.sha256["mp4"]}) is None  # fewer files
    assert is_archived(dam, result.key_prefix, "other-render") is None


def test_unreadable_completion_record_means_not_archived(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    render = make_render(tmp_path / "work")
    result = archive_render(dam, render)
    (tmp_path / "dam" / result.completion_key).write_text('{"objects": ')
    assert is_archived(dam, result.key_prefix, render.render_id) is None
    assert not archive_render(dam, render).skipped


def test_a_record_whose_review_reads_otherwise_means_not_archived(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    result = archive_render(dam, make_render(tmp_path / "work"))
    path = tmp_path / "dam" / result.completion_key
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "review": {"review_status": "auto_approved"}}))  # an older review shape
    assert is_archived(dam, result.key_prefix, "9f3c2a") is None


def planned_request() -> RenderRequest:
    """The planned request of make_render's render."""
    return RenderRequest(
        render_id="9f3c2a", brief_id="b1", campaign_id="c1", row_index=0, locale="pt-BR", language="English",
        aspect_ratio="16:9", resolution="256p", width=448, height=256,
        duration_s=2, seed=7, take=0, prompt="p", dialogue=[], forbidden_terms=[],
        model_id="magihuman-tiny")


def test_find_archived_finds_a_planned_renders_record(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    render = make_render(tmp_path / "work")
    result = archive_render(dam, render)
    request = planned_request()
    record = find_archived(dam, request)
    assert record is not None and record.keys == result.keys and record.sizes == result.sizes
    assert record.review_status == "auto_approved" and record.seed == 7
    assert find_archived(dam, request.model_copy(update={"locale": "de-DE"})) is None


def test_a_dam_written_before_variants_is_still_found(tmp_path):
    """Renders archived under campaign=/brief=/locale=/aspect/ (no variant segment) are found for the
    brief's own variant, so a re-run of an old briefs file skips them."""
    dam = LocalDAM(tmp_path / "dam")
    result = archive_render(dam, make_render(tmp_path / "work"))
    new_folder = tmp_path / "dam" / result.key_prefix
    old_folder = tmp_path / "dam" / result.key_prefix.replace("variant=main/", "")
    old_folder.parent.mkdir(parents=True)
    new_folder.rename(old_folder)
    record_path = old_folder / "9f3c2a.done.json"
    record_path.write_text(record_path.read_text().replace("variant=main/", ""))
    request = planned_request()
    record = find_archived(dam, request)
    assert record is not None and all("variant=" not in key for key in record.keys.values())
    assert find_archived(dam, request.model_copy(update={"variant_id": "hook-b"})) is None


def test_local_write_failure_leaves_no_partial_file(tmp_path):
    dam = LocalDAM(tmp_path / "dam")

    def failing_write(handle):
        handle.write(b"half of it")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        dam._write("a/b.mp4", failing_write)
    assert list((tmp_path / "dam" / "a").iterdir()) == []
    assert dam.head("a/b.mp4") is None


def test_local_put_file_with_wrong_checksum_keeps_nothing(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"frames")
    with pytest.raises(DAMError, match="changed while it was archived"):
        dam.put_file("a/clip.mp4", source, sha256=hashlib.sha256(b"other").hexdigest())
    assert list((tmp_path / "dam" / "a").iterdir()) == []


def test_local_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        LocalDAM(tmp_path / "dam").put_bytes("a/x.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "dam" / "a" / "x.json").stat().st_mode & 0o777 == 0o644


def test_local_list_keys_walks_prefixes_and_skips_hidden_entries(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    for key in ("campaign=a/brief=1/r1.done.json", "campaign=a/brief=1/r1.mp4", "campaign=a/brief=2/x/r2.done.json",
                "campaign=b/brief=3/r3.done.json"):
        dam.put_bytes(key, b"{}", tags={"review_status": "auto_approved"})  # tags live under the hidden .tags/
    (tmp_path / "dam" / "campaign=a" / "brief=1" / ".r9.done.json.part").write_bytes(b"")
    assert dam.list_keys("campaign=a", ".done.json") == ["campaign=a/brief=1/r1.done.json",
                                                         "campaign=a/brief=2/x/r2.done.json"]
    assert len(dam.list_keys()) == 4 and dam.list_keys("campaign=none") == []


def test_a_check_without_rehash_sees_size_and_mtime_and_a_rehash_sees_the_bytes(tmp_path):
    from pipeline.archive import objects_intact

    dam = LocalDAM(tmp_path / "dam")
    result = archive_render(dam, make_render(tmp_path / "files"))
    record = is_archived(dam, result.key_prefix, result.render_id)
    assert all(obj.mtime_ns for obj in record.objects.values())
    quick = dam.head(result.keys["wav"], checksum=False)
    assert quick.sha256 is None and quick.size == result.sizes["wav"] and quick.mtime_ns
    path = tmp_path / "dam" / result.keys["wav"]
    stat = path.stat()
    path.write_bytes(bytes(reversed(path.read_bytes())))  # same size, other bytes
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert objects_intact(dam, record, verify=False)  # size and mtime as archived: only a re-hash tells
    assert not objects_intact(dam, record, verify=True)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not objects_intact(dam, record, verify=False)
