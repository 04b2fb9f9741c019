"""OpenLineage RunEvent validation shared by the lineage and campaign tests."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import jsonschema

SPEC = Path(__file__).resolve().parents[1] / "data" / "openlineage" / "OpenLineage.json"


def make_run_event_validator() -> jsonschema.Draft202012Validator:
    spec = json.loads(SPEC.read_text())
    format_checker = jsonschema.FormatChecker()  # date-time and uuid are built in; uri needs a package we lack

    @format_checker.checks("uri")
    def _is_uri(value: object) -> bool:
        parsed = urlparse(str(value))
        return bool(parsed.scheme) and bool(parsed.netloc or parsed.path)

    # The spec is the root: its $refs point into "definitions", and its own $ref is RunEvent.
    assert spec["$ref"] == "#/definitions/RunEvent"
    validator_cls = jsonschema.validators.validator_for(spec)
    assert validator_cls is jsonschema.Draft202012Validator
    validator_cls.check_schema(spec)
    return validator_cls(spec, format_checker=format_checker)


def assert_valid(validator, event: dict) -> None:
    errors = sorted(validator.iter_errors(event), key=lambda e: list(e.absolute_path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
