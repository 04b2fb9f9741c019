"""Lineage config, dataset naming and facets (no transport)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from openlineage.client.serde import Serde
from openlineage.client.transport.file import FileTransport
from openlineage.client.transport.http import HttpTransport

from pipeline.lineage import (
    LINEAGE_FILE,
    LineageConfig,
    briefs_dataset,
    checkpoint_dataset,
    dam_dataset,
)
from schemas.brief import BRIEF_ARROW_SCHEMA


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("OPENLINEAGE_URL", "OPENLINEAGE_ENDPOINT", "OPENLINEAGE_API_KEY", "OPENLINEAGE_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_from_env_defaults_to_one_jsonl_file_in_workdir(clean_env, tmp_path):
    config = LineageConfig.from_env("campaign.c1", tmp_path / "work")
    assert config.url is None
    assert config.file_path == tmp_path / "work" / LINEAGE_FILE
    transport = config.transport()
    assert isinstance(transport, FileTransport)
    assert transport.config.append  # one file for all events, not one file per event
    assert transport.config.log_file_path == str(tmp_path / "work" / "lineage.jsonl")
    assert (tmp_path / "work").is_dir()


def test_from_env_uses_http_when_openlineage_url_is_set(clean_env, tmp_path):
    clean_env.setenv("OPENLINEAGE_URL", "http://marquez.lineage:5000")
    clean_env.setenv("OPENLINEAGE_API_KEY", "s3cret")
    clean_env.setenv("OPENLINEAGE_NAMESPACE", "agency-prod")
    config = LineageConfig.from_env("campaign.c1", tmp_path)
    assert config.namespace == "agency-prod"
    transport = config.transport()
    assert isinstance(transport, HttpTransport)
    assert transport.url == "http://marquez.lineage:5000"
    assert transport.endpoint == "api/v1/lineage"
    assert transport.config.auth.get_bearer() == "Bearer s3cret"
    assert not (tmp_path / LINEAGE_FILE).exists()


def test_overrides_win_over_environment(clean_env, tmp_path):
    clean_env.setenv("OPENLINEAGE_URL", "http://marquez:5000")
    config = LineageConfig.from_env("j", tmp_path, url=None, namespace="other")
    assert config.url is None and config.namespace == "other"
    assert isinstance(config.transport(), FileTransport)


@pytest.mark.parametrize("url", ["marquez:5000", "ftp://host/x", "http://"])
def test_bad_openlineage_url_is_a_config_error_naming_the_variable(clean_env, tmp_path, url):
    clean_env.setenv("OPENLINEAGE_URL", url)
    with pytest.raises(ValueError, match="OPENLINEAGE_URL"):
        LineageConfig.from_env("campaign.c1", tmp_path)


def test_config_needs_a_job_name_and_a_destination():
    with pytest.raises(ValueError, match="job_name"):
        LineageConfig(job_name="", file_path=Path("x.jsonl"))
    with pytest.raises(ValueError, match="file_path"):
        LineageConfig(job_name="j")


def test_briefs_dataset_local_path_is_absolute_in_file_namespace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = briefs_dataset("in/briefs.parquet", BRIEF_ARROW_SCHEMA, rows=7)
    assert ds.namespace == "file"
    assert ds.name == str(tmp_path / "in" / "briefs.parquet")
    assert ds.inputFacets["inputStatistics"].rowCount == 7


def test_briefs_dataset_schema_facet_lists_every_column_with_nested_fields():
    ds = briefs_dataset("s3://agency-briefs/2026/q4/briefs.parquet", BRIEF_ARROW_SCHEMA)
    assert (ds.namespace, ds.name) == ("s3://agency-briefs", "2026/q4/briefs.parquet")
    fields = {f.name: f for f in ds.facets["schema"].fields}
    assert list(fields) == BRIEF_ARROW_SCHEMA.names
    assert fields["duration_s"].type == str(BRIEF_ARROW_SCHEMA.field("duration_s").type)
    # list<struct<locale, lines: list<struct<speaker, line>>>>: two levels of nesting survive
    localized = fields["localized_dialogue"]
    assert [f.name for f in localized.fields] == ["locale", "lines"]
    assert [f.name for f in localized.fields[1].fields] == ["speaker", "line"]
    # scalar columns carry no empty nested list in the JSON
    assert "fields" not in Serde.to_dict(fields["prompt"])


def test_briefs_dataset_schema_of_a_plain_arrow_schema():
    schema = pa.schema([("a", pa.int32()), ("b", pa.struct([("x", pa.string())]))])
    ds = briefs_dataset("/data/b.parquet", schema)
    as_json = Serde.to_dict(ds)
    assert as_json["facets"]["schema"]["fields"] == [
        {"name": "a", "type": "int32"},
        {"name": "b", "type": "struct<x: string>", "fields": [{"name": "x", "type": "string"}]},
    ]


def test_checkpoint_dataset_names_the_weights_location_and_model():
    ds = checkpoint_dataset("magihuman-distill", "s3://weights/magihuman/distill/")
    assert (ds.namespace, ds.name) == ("s3://weights", "magihuman/distill/")
    facet = Serde.to_dict(ds)["facets"]["paddockModel"]
    assert facet["modelId"] == "magihuman-distill" and facet["randomInit"] is False
    assert facet["_schemaURL"].startswith("https://")


def test_checkpoint_dataset_without_weights_is_a_random_init_preset():
    ds = checkpoint_dataset("tiny")
    assert (ds.namespace, ds.name) == ("paddock", "model/tiny")
    assert ds.facets["paddockModel"].randomInit is True


def test_dam_dataset_output_statistics_only_when_counted(tmp_path):
    bare = dam_dataset("s3://dam-bucket")
    assert (bare.namespace, bare.name) == ("s3://dam-bucket", "/")
    assert bare.outputFacets == {}
    counted = dam_dataset(f"file://{tmp_path}/dam", rows=12, size_bytes=3_456_789, file_count=60)
    assert (counted.namespace, counted.name) == ("file", str(tmp_path / "dam"))
    stats = counted.outputFacets["outputStatistics"]
    assert (stats.rowCount, stats.size, stats.fileCount) == (12, 3_456_789, 60)
