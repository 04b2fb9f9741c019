"""Every reject rule of ingest, with its reason; no Ray needed (stages are plain callables)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.ingest import INGEST_SCHEMA, ValidateBriefs, first_row_by_brief_id, reason_category
from schemas.brief import BRIEF_ARROW_SCHEMA, CampaignBrief


def brief(**overrides) -> dict:
    row = {
        "brief_id": "b1",
        "campaign_id": "c1",
        "prompt": "A woman smiles at the camera in a bright kitchen.",
        "source_locale": "en-US",
    }
    row.update(overrides)
    return row


def run_ingest(rows: list[dict], model_id: str | None = None) -> list[dict]:
    table = pa.Table.from_pylist(rows, schema=BRIEF_ARROW_SCHEMA)
    table = table.append_column("row_index", pa.array(range(len(rows)), pa.int64()))
    stage = ValidateBriefs(first_row_by_brief_id(table.column("brief_id").to_pylist()), model_id)
    out = stage(table)
    assert out.schema == INGEST_SCHEMA
    return out.to_pylist()


def only_reject(rows: list[dict], model_id: str | None = None) -> dict:
    out = run_ingest(rows, model_id)
    assert len(out) == 1 and out[0]["brief_json"] is None, out
    return out[0]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"brief_id": "bad id with spaces"}, "brief_id"),
        ({"brief_id": ".hidden"}, "brief_id"),
        ({"brief_id": "x" * 65}, "brief_id"),
        ({"campaign_id": "c/1"}, "campaign_id"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"duration_s": 1}, "duration_s"),
        ({"duration_s": 16}, "duration_s"),
        ({"takes": 0}, "takes"),
        ({"takes": 9}, "takes"),
        ({"variants": []}, "variants"),
        ({"aspect_ratios": ["2:1"]}, "aspect_ratios"),
        ({"aspect_ratios": []}, "aspect_ratios"),
        ({"resolution": "480p"}, "resolution"),
        ({"negative_prompt": "x" * 4001}, "negative_prompt"),
        ({"source_locale": "not a locale"}, "source_locale"),
        ({"seed": -1}, "seed"),
    ],
)
def test_whole_brief_faults_reject_the_brief_naming_the_field(overrides, field):
    reject = only_reject([brief(**overrides)])
    assert reject["reason"].startswith(f"{field}"), reject["reason"]
    assert reject["locale"] is None
    assert reject["row_index"] == 0
    assert json.loads(reject["raw"])["prompt"] == brief(**overrides)["prompt"]


@pytest.mark.parametrize("uri", ["refs/hero.jpg", "./hero.jpg", "file://refs/hero.jpg", "https://cdn.example/hero.jpg",
                                 "gs://bucket/hero.jpg", "s3://bucket-only", "s3:///key.jpg"])
def test_reference_images_a_worker_cannot_read_reject_the_brief(uri):
    reject = only_reject([brief(reference_image_uri=uri)])
    assert reject["reason"].startswith("reference_image_uri: "), reject["reason"]
    assert repr(uri) in reject["reason"] and "s3://bucket/key" in reject["reason"]


@pytest.mark.parametrize("uri", ["/data/refs/hero.jpg", "file:///data/refs/hero.jpg", "s3://brand-assets/refs/hero.jpg"])
def test_reference_images_a_worker_can_read_pass(uri):
    (valid,) = run_ingest([brief(reference_image_uri=uri)])
    assert valid["reason"] is None
    assert CampaignBrief.model_validate_json(valid["brief_json"]).reference_image_uri == uri


def test_missing_required_field_is_named():
    reject = only_reject([brief(prompt=None)])
    assert reject["reason"] == "prompt: required field is missing or null"


def test_a_row_that_does_not_parse_is_rejected_with_its_raw_row():
    # duration_s as text in a string column: the file reads, the row does not parse.
    table = pa.table({
        "brief_id": ["b1"], "campaign_id": ["c1"], "prompt": ["p"], "source_locale": ["en-US"],
        "duration_s": ["five"], "extra_column": ["kept"],
    }).append_column("row_index", pa.array([0], pa.int64()))
    (reject,) = ValidateBriefs({"b1": 0})(table).to_pylist()
    assert reject["reason"].startswith("duration_s: Input should be a valid integer")
    assert json.loads(reject["raw"]) == {
        "brief_id": "b1", "campaign_id": "c1", "prompt": "p", "source_locale": "en-US",
        "duration_s": "five", "extra_column": "kept",
    }


def test_duplicate_brief_id_keeps_the_first():
    out = run_ingest([brief(prompt="first"), brief(brief_id="b2"), brief(prompt="second")])
    valid = [r for r in out if r["brief_json"]]
    rejects = [r for r in out if r["reason"]]
    assert [r["row_index"] for r in valid] == [0, 1]
    assert json.loads(valid[0]["brief_json"])["prompt"] == "first"
    assert len(rejects) == 1 and rejects[0]["row_index"] == 2
    assert rejects[0]["reason"].startswith("brief_id: duplicate")
    assert "row 0 already uses" in rejects[0]["reason"]


def test_unsupported_language_rejects_that_locale_only():
    out = run_ingest([brief(locales=["en-US", "es-ES", "de-DE"])])
    valid = [r for r in out if r["brief_json"]]
    rejects = [r for r in out if r["reason"]]
    assert [r["locale"] for r in rejects] == ["es-ES"]
    assert reason_category(rejects[0]["reason"]) == "locales: unsupported language"
    assert CampaignBrief.model_validate_json(valid[0]["brief_json"]).locales == ["en-US", "de-DE"]


def test_missing_translation_rejects_that_locale_only():
    row = brief(
        dialogue=[{"speaker": "Woman", "line": "Hello"}],
        localized_dialogue=[{"locale": "de-DE", "lines": [{"speaker": "Frau", "line": "Hallo"}]}],
        locales=["en-US", "de-DE", "fr-FR"],
    )
    out = run_ingest([row])
    rejects = [r for r in out if r["reason"]]
    assert [(r["locale"], reason_category(r["reason"])) for r in rejects] == [
        ("fr-FR", "locales: missing localized_dialogue")
    ]
    kept = CampaignBrief.model_validate_json(out[0]["brief_json"]).locales
    assert kept == ["en-US", "de-DE"]


def test_brief_without_dialogue_is_valid_in_every_supported_locale():
    out = run_ingest([brief(locales=["en-GB", "fr-FR", "ja-JP", "zh-HK"])])
    assert len(out) == 1 and out[0]["reason"] is None


def test_malformed_locale_tag_rejects_that_locale_only():
    out = run_ingest([brief(locales=["en-US", "english!!"])])
    rejects = [r for r in out if r["reason"]]
    assert len(rejects) == 1 and rejects[0]["locale"] == "english!!"
    assert rejects[0]["reason"].startswith("locales: not a BCP-47 locale tag")


def test_every_locale_rejected_leaves_no_brief():
    out = run_ingest([brief(source_locale="es-ES")])
    assert len(out) == 1 and out[0]["locale"] == "es-ES" and out[0]["brief_json"] is None


def test_locale_tags_are_canonicalized_and_deduplicated():
    out = run_ingest([brief(locales=["en_us", "EN-US", "de-de"])])
    assert CampaignBrief.model_validate_json(out[0]["brief_json"]).locales == ["en-US", "de-DE"]


# --------------------------------------------------------------------------- creative variants


def variants_brief(variants: list[dict], **overrides) -> dict:
    return brief(prompt="A {person} drinks Lumen in {city}.", variants=variants, **overrides)


def valid_variant_ids(out: list[dict]) -> list[str]:
    (valid,) = [r for r in out if r["brief_json"]]
    return [v.variant_id for v in CampaignBrief.model_validate_json(valid["brief_json"]).variants]


def variant_rejects(out: list[dict]) -> list[str]:
    rejects = [r for r in out if r["reason"]]
    assert all(r["locale"] is None and r["brief_id"] == "b1" for r in rejects)
    return [r["reason"] for r in rejects]


GOOD = {"variant_id": "paris", "slots": {"person": "woman", "city": "Paris"}}


@pytest.mark.parametrize("bad, reason", [
    ({"variant_id": "oslo", "slots": {"person": "man"}},
     "variants[1].slots: no value for a placeholder ({city}, which the brief's prompt uses)"),
    ({"variant_id": "rome", "slots": {"person": "man", "city": "Rome", "colour": "red"}},
     "variants[1].slots: a value the prompt does not use (colour; the placeholders of the brief's prompt: "
     "person, city)"),
    ({"variant_id": "paris", "slots": {"person": "man", "city": "Paris"}},
     "variants[1].variant_id: duplicate (got 'paris', which variants[0] already uses"),
    ({"variant_id": "no spaces", "slots": {"person": "man", "city": "Rome"}}, "variants[1].variant_id: invalid id"),
    ({"variant_id": None, "slots": {"person": "man", "city": "Rome"}},
     "variants[1].variant_id: required field is missing or null"),
    ({"variant_id": "long", "prompt": "A {person} in {city}, " + "very " * 800, "slots": {"person": "m", "city": "R"}},
     "variants[1].prompt: String should have at most 4000 characters"),
    ({"variant_id": "own", "prompt": "A {dog}.", "slots": {"person": "m", "city": "R"}},
     "variants[1].slots: no value for a placeholder ({dog}, which its prompt uses)"),
    ({"variant_id": "brace", "prompt": "A {bad name}.", "slots": {}}, "variants[1].prompt: malformed placeholder"),
    ({"variant_id": "blank", "slots": {"person": " ", "city": "Rome"}}, "variants[1].slots: slot 'person' needs"),
])
def test_a_bad_variant_rejects_that_variant_naming_the_field(bad, reason):
    out = run_ingest([variants_brief([GOOD, bad])])
    (got,) = variant_rejects(out)
    assert got.startswith(reason), got
    assert valid_variant_ids(out) == ["paris"]


def test_an_override_of_the_wrong_shape_rejects_that_variant():
    # Shapes Arrow would refuse in a typed column can still arrive in a file written without the schema.
    table = pa.table({
        "brief_id": ["b1"], "campaign_id": ["c1"], "prompt": ["A kitchen."], "source_locale": ["en-US"],
        "variants": [[{"variant_id": "a", "dialogue": None, "colour": None},
                      {"variant_id": "b", "dialogue": "Hello there", "colour": None},
                      {"variant_id": "c", "dialogue": None, "colour": "red"}]],
    }).append_column("row_index", pa.array([0], pa.int64()))
    out = ValidateBriefs({"b1": 0})(table).to_pylist()
    assert variant_rejects(out) == [
        "variants[1].dialogue: Input should be a valid list (got 'Hello there')",
        "variants[2].colour: Extra inputs are not permitted (got 'red')",
    ]
    assert valid_variant_ids(out) == ["a"]


def test_a_variant_that_replaces_the_dialogue_must_translate_it():
    row = variants_brief(
        [GOOD, {**GOOD, "variant_id": "new-line", "dialogue": [{"speaker": "Woman", "line": "New line."}]},
         {**GOOD, "variant_id": "translated", "dialogue": [{"speaker": "Woman", "line": "New line."}],
          "localized_dialogue": [{"locale": "de-DE", "lines": [{"speaker": "Frau", "line": "Neu."}]}]}],
        dialogue=[{"speaker": "Woman", "line": "Hello"}],
        localized_dialogue=[{"locale": "de-DE", "lines": [{"speaker": "Frau", "line": "Hallo"}]}],
        locales=["en-US", "de-DE"],
    )
    out = run_ingest([row])
    (reason,) = variant_rejects(out)
    assert reason.startswith("variants[1].localized_dialogue: missing for a target locale (de-DE:")
    assert reason_category(reason) == "variants[].localized_dialogue: missing for a target locale"
    assert valid_variant_ids(out) == ["paris", "translated"]


def test_when_every_variant_is_bad_the_brief_makes_nothing():
    out = run_ingest([variants_brief([{"variant_id": "a"}, {"variant_id": "b", "slots": {"person": "m"}}])])
    assert [r["brief_json"] for r in out] == [None, None]
    assert [reason.split(":")[0] for reason in variant_rejects(out)] == ["variants[0].slots", "variants[1].slots"]


@pytest.mark.parametrize("prompt, reason", [
    ("A {person} smiles.", "prompt: placeholder {person} has no value"),
    ("A sign reads {SALE!r}.", "prompt: malformed placeholder '{SALE!r}'"),
    ("An unbalanced { brace.", "prompt: malformed template"),
])
def test_prompt_faults_without_variants_reject_the_brief(prompt, reason):
    assert only_reject([brief(prompt=prompt)])["reason"].startswith(reason)


def test_literal_braces_and_variant_columns_round_trip():
    out = run_ingest([brief(prompt="A neon sign reads {{OPEN}}.", takes=3, negative_prompt="blur", audio=False)])
    valid = CampaignBrief.model_validate_json(out[0]["brief_json"])
    assert (valid.takes, valid.negative_prompt, valid.audio) == (3, "blur", False)
    assert valid.scene_for(valid.creative_variants[0]) == "A neon sign reads {OPEN}."


def test_integer_variants_column_is_read_as_takes_with_one_warning(tmp_path, caplog):
    import pyarrow.parquet as pq

    from pipeline.ingest import read_briefs_table

    old = pa.table({"brief_id": ["b1", "b2", "b3"], "campaign_id": ["c1"] * 3, "prompt": ["A kitchen."] * 3,
                    "source_locale": ["en-US"] * 3, "variants": pa.array([2, None, 9], pa.int64())})
    pq.write_table(old, tmp_path / "old.parquet")
    with caplog.at_level("WARNING", logger="pipeline.ingest"):
        table = read_briefs_table(tmp_path / "old.parquet")
    (warning,) = caplog.records
    assert "old.parquet" in warning.getMessage() and "takes" in warning.getMessage()
    out = ValidateBriefs(first_row_by_brief_id(["b1", "b2", "b3"]))(table).to_pylist()
    takes = [CampaignBrief.model_validate_json(r["brief_json"]).takes for r in out if r["brief_json"]]
    assert takes == [2, 1]
    (reject,) = [r for r in out if r["reason"]]
    assert reject["row_index"] == 2
    assert reject["reason"].startswith("variants: an integer here is the old name of takes (seeds per clip), use 1-8")


# --- the text window: dialogue the model would not read ---------------------------------------

LONG_SCENE = "A chef in a white apron plates a dessert in a busy kitchen while the camera glides in. " * 6  # 522 bytes


def _with_dialogue(scene: str, line: str, **overrides) -> dict:
    return brief(prompt=scene, dialogue=[{"speaker": "Chef in white apron", "line": line}], **overrides)


def test_dialogue_past_the_window_rejects_the_brief_naming_the_field():
    # The tiny preset's tokenizer counts one token per UTF-8 byte (+ <bos>): the scene fits, its dialogue does not.
    row = _with_dialogue(LONG_SCENE, "This is the best dessert in the whole city, and you can taste it tonight.")
    reject = only_reject([row], model_id="tiny")
    assert reject["reason"].startswith("dialogue: past the model's 640-token text window in en-US"), reject["reason"]
    assert "the tiny preset's tokenizer" in reject["reason"] and reject["locale"] == "en-US"


def test_dialogue_inside_the_window_passes_even_when_the_background_sound_is_past_it():
    row = _with_dialogue(LONG_SCENE[:300], "Taste it tonight.", background_sound="kitchen clatter, " * 40)
    (valid,) = run_ingest([row], model_id="tiny")
    assert valid["reason"] is None


def test_a_long_translation_rejects_that_locale_only():
    row = _with_dialogue(LONG_SCENE[:520], "Taste it.", locales=["en-US", "de-DE"],
                         localized_dialogue=[{"locale": "de-DE", "lines": [
                             {"speaker": "Chef in white apron", "line": "Probieren Sie es heute Abend, im Restaurant am Marktplatz, gleich neben dem Brunnen."}]}])
    out = run_ingest([row], model_id="tiny")
    valid = [r for r in out if r["brief_json"]]
    rejects = [r for r in out if r["reason"]]
    assert [r["locale"] for r in rejects] == ["de-DE"]
    assert rejects[0]["reason"].startswith("localized_dialogue: past the model's 640-token text window in de-DE")
    assert CampaignBrief.model_validate_json(valid[0]["brief_json"]).locales == ["en-US"]


def test_a_variant_whose_dialogue_is_past_the_window_is_rejected_alone():
    variants = [{"variant_id": "short", "slots": {"dish": "a tart"}},
                {"variant_id": "long", "slots": {"dish": "a tart " + "with cream " * 60}}]
    row = _with_dialogue("A chef plates {dish}.", "Taste it tonight.", variants=variants)
    out = run_ingest([row], model_id="tiny")
    rejects = [r["reason"] for r in out if r["reason"]]
    assert len(rejects) == 1 and rejects[0].startswith("variants[1].dialogue: past the model's 640-token"), rejects
    valid = [r for r in out if r["brief_json"]]
    assert [v.variant_id for v in CampaignBrief.model_validate_json(valid[0]["brief_json"]).variants] == ["short"]


def test_released_models_count_with_the_t5gemma_tokenizer_or_say_they_estimate(tmp_path, monkeypatch):
    from model.magihuman.text_encoder import byte_level_tokenizer
    from pipeline.expand import PromptTokens, estimated_gemma_tokens

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    # A tokenizer folder as the hub ships one (tokenizer.json + tokenizer_config.json).
    byte_level_tokenizer().save_pretrained(tmp_path / "t5gemma-9b-9b-ul2")
    exact = PromptTokens("magihuman-distill", tmp_path / "t5gemma-9b-9b-ul2")
    assert exact("héllo") == 1 + len("héllo".encode()) and str(tmp_path) in exact.method
    estimate = PromptTokens("magihuman-distill", tmp_path / "nowhere")
    assert estimate("héllo") == estimated_gemma_tokens("héllo") and "estimate" in estimate.method
    assert PromptTokens()("x") == estimated_gemma_tokens("x")


def test_the_t5gemma_estimate_counts_high():
    from pipeline.expand import estimated_gemma_tokens

    assert estimated_gemma_tokens("") == 2  # <bos>, <eos>
    assert estimated_gemma_tokens("the camera") == 2 + 1 + 2  # one token per 4 letters of a word, rounded up
    assert estimated_gemma_tokens("2024, 你 好") == 2 + 4 + 1 + 2  # digits, punctuation and CJK one each
    # English the length of the reference's example prompt (about 1,570 bytes) stays inside the window.
    assert estimated_gemma_tokens(LONG_SCENE * 3) < 640
