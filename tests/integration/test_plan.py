"""ingest + expand through Ray Data on a real local Ray instance."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.expand import summarize_fan_out
from pipeline.run import plan, write_plan
from schemas.brief import BRIEF_ARROW_SCHEMA
from schemas.formats import ASPECT_RATIOS, RESOLUTIONS, delivery_size
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA

# examples/briefs.parquet as it was before creative variants (an integer `variants` column), and
# the render ids paddock gives its nine requests: the same as for the file written today, so
# re-running such a file skips what the DAM has. Issue 16's composer (the dialogue woven into the
# main body) changed the model prompt of the briefs with dialogue, and with it their ids (their
# clips would change); the ambient brief's prompt, and its two ids, are as they were.
INTEGER_VARIANTS_FILE = Path(__file__).resolve().parents[1] / "data" / "briefs-integer-variants" / "briefs.parquet"
INTEGER_VARIANTS_IDS = [
    "r287ea4dca401ff949f4179a", "rdc82ff58d182df614fa28ed", "ra7cdf5294ecd6df6c916aee",
    "rf27a7cfb491b4c0571b3c5a", "r872be89ab8b19af944c045b", "r8e3794f0c5e7711ca7ebbac",
    "r04f216f4070645cbe9f1cff", "ra9ceca55f69b27dd6435551", "r0919ff54d8529b13682ef86",
]
EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "examples" / "briefs.parquet"


def write_briefs(path, rows):
    pq.write_table(pa.Table.from_pylist(rows, schema=BRIEF_ARROW_SCHEMA), path)
    return path


def test_plan_splits_requests_and_rejects(ray_session, tmp_path):
    rows = [
        {"brief_id": "a", "campaign_id": "c", "prompt": "Scene A.", "source_locale": "en-US",
         "locales": ["en-US", "es-ES"], "aspect_ratios": ["16:9", "1:1"], "takes": 2},
        {"brief_id": "b", "campaign_id": "c", "prompt": "Scene B.", "source_locale": "de-DE", "duration_s": 30},
        {"brief_id": "a", "campaign_id": "c", "prompt": "Again.", "source_locale": "en-US"},
        {"brief_id": "d", "campaign_id": "c", "prompt": "Scene D.", "source_locale": "ko-KR"},
    ]
    result = plan(write_briefs(tmp_path / "briefs.parquet", rows), model_id="tiny")
    assert (result.briefs_read, result.briefs_valid) == (4, 2)
    assert result.requests.schema == RENDER_REQUEST_ARROW_SCHEMA
    assert result.requests.num_rows == 2 * 2 + 1
    assert sorted(result.rejects.column("row_index").to_pylist()) == [0, 1, 2]
    assert result.reject_reasons == {
        "locales: unsupported language": 1,
        "duration_s: Input should be less than or equal to 15": 1,
        "brief_id: duplicate": 1,
    }

    requests_path, rejects_path = write_plan(result, tmp_path / "out")
    assert pq.read_table(requests_path).num_rows == 5
    assert pq.read_table(rejects_path).column_names == ["row_index", "brief_id", "locale", "reason", "raw"]

    again = plan(tmp_path / "briefs.parquet", model_id="tiny")
    assert again.requests.column("render_id").to_pylist() == result.requests.column("render_id").to_pylist()


def test_plan_keeps_input_order_across_blocks(ray_session, tmp_path, monkeypatch):
    import pipeline.run

    monkeypatch.setattr(pipeline.run, "PLAN_BLOCK_ROWS", 7)
    rows = [{"brief_id": f"b{i:03d}", "campaign_id": "c", "prompt": f"Scene {i}.", "source_locale": "en-US"}
            for i in range(40)]
    result = plan(write_briefs(tmp_path / "briefs.parquet", rows), model_id="tiny")
    assert result.requests.column("row_index").to_pylist() == list(range(40))
    assert result.requests.column("brief_id").to_pylist() == [r["brief_id"] for r in rows]


def test_an_old_integer_variants_file_plans_as_before(ray_session, caplog):
    assert pq.read_schema(INTEGER_VARIANTS_FILE).field("variants").type == pa.int64()
    with caplog.at_level("WARNING", logger="pipeline.ingest"):
        old = plan(INTEGER_VARIANTS_FILE, model_id="tiny")
    assert len([r for r in caplog.records if "old name of takes" in r.getMessage()]) == 1
    assert old.rejects.num_rows == 0
    assert old.requests.column("render_id").to_pylist() == INTEGER_VARIANTS_IDS
    assert old.requests.column("take").to_pylist() == [0] * 7 + [1, 0]
    assert set(old.requests.column("variant_id").to_pylist()) == {"main"}
    # The example as make_briefs.py writes it now (takes, no variants) plans to the same renders.
    assert plan(EXAMPLE_FILE, model_id="tiny").requests.column("render_id").to_pylist() == INTEGER_VARIANTS_IDS


def campaign_rows() -> list[dict]:
    """Slots, overrides, takes and every format, with faults a content-ops team makes."""
    product = {"variant_id": "bottle", "slots": {"product": "a glass bottle of Lumen"}}
    return [
        {"brief_id": "city", "campaign_id": "spring", "source_locale": "en-US", "resolution": "720p",
         "prompt": "A {person} opens {product} on a rooftop in {city}.", "takes": 2, "seed": 10,
         "dialogue": [{"speaker": "Presenter", "line": "Spring tastes better."}],
         "localized_dialogue": [{"locale": "ja-JP", "lines": [{"speaker": "Presenter", "line": "春はおいしい。"}]}],
         "locales": ["en-US", "ja-JP"], "aspect_ratios": ["4:5", "21:9"], "negative_prompt": "subtitles",
         "variants": [
             {"variant_id": "paris", "slots": {"person": "woman", "product": "Lumen", "city": "Paris"}},
             {"variant_id": "tokyo", "slots": {"person": "man", "product": "Lumen", "city": "Tokyo"},
              "background_sound": "Traffic far below", "dialogue": [{"speaker": "Man", "line": "Cheers."}],
              "localized_dialogue": [{"locale": "ja-JP", "lines": [{"speaker": "Man", "line": "乾杯。"}]}]},
             {"variant_id": "oslo", "slots": {"person": "man", "city": "Oslo"}},  # no {product}
             {"variant_id": "paris", "slots": {"person": "girl", "product": "Lumen", "city": "Paris"}},  # duplicate
             {"variant_id": "rome", "slots": {"person": "man", "product": "Lumen", "city": "Rome"},
              "dialogue": [{"speaker": "Man", "line": "Ciao."}]},  # replaces the dialogue, no Japanese
         ]},
        *({"brief_id": f"formats-{resolution}", "campaign_id": "spring", "source_locale": "fr-FR",
           "prompt": "{product} on wet slate, the camera pushes in.", "resolution": resolution,
           "aspect_ratios": list(ASPECT_RATIOS), "duration_s": 3, "audio": resolution != "256p",
           "variants": [product, {**product, "variant_id": "can", "slots": {"product": "A can", "extra": "x"}}]}
          for resolution in RESOLUTIONS),
    ]


def test_plan_a_campaign_with_variants_takes_and_every_format(ray_session, tmp_path):
    result = plan(write_briefs(tmp_path / "briefs.parquet", campaign_rows()), model_id="magihuman-distill")
    requests = result.requests.to_pylist()
    assert (result.briefs_read, result.briefs_valid) == (5, 5)

    per_brief = Counter(r["brief_id"] for r in requests)
    # city: 2 variants left of 5 x 2 locales x 2 aspects x 2 takes; formats: 1 variant x 1 locale x 9 aspects
    assert per_brief == {"city": 16, **{f"formats-{res}": 9 for res in RESOLUTIONS}}
    summary = {s.brief_id: s for s in summarize_fan_out(result.requests)}
    assert summary["city"].line.startswith("city: 2 variants x 2 locales x 2 aspects x 2 takes = 16 requests, "
                                           "80 clip-seconds; negative_prompt is ignored")
    assert (summary["formats-720p"].requests, summary["formats-720p"].clip_seconds) == (9, 27)

    rejects = sorted((r["row_index"], r["reason"].split(":")[0]) for r in result.rejects.to_pylist())
    assert rejects == [(0, "variants[2].slots"), (0, "variants[3].variant_id"),
                       (0, "variants[4].localized_dialogue"), *((row, "variants[1].slots") for row in range(1, 5))]

    by_key = {(r["brief_id"], r["variant_id"], r["locale"], r["aspect_ratio"], r["take"]): r for r in requests}
    tokyo = by_key[("city", "tokyo", "ja-JP", "21:9", 1)]
    assert tokyo["prompt"] == ('A man opens Lumen on a rooftop in Tokyo. Man says, "乾 杯。"\n\n'
                               'Dialogue:\n<Man, Japanese>: "乾 杯。"\n\n'
                               "Background Sound:\n<Traffic far below>")
    assert (tokyo["seed"], tokyo["width"], tokyo["height"], tokyo["negative_prompt"]) == (11, 1680, 720, "subtitles")
    paris = by_key[("city", "paris", "en-US", "4:5", 0)]
    assert paris["prompt"].startswith("A woman opens Lumen on a rooftop in Paris.")
    assert (paris["width"], paris["height"], paris["seed"]) == (720, 900, 10)
    for r in requests:
        if r["brief_id"].startswith("formats-"):
            assert (r["width"], r["height"]) == delivery_size(r["resolution"], r["aspect_ratio"])
            assert r["prompt"].startswith("a glass bottle of Lumen on wet slate, the camera pushes in.")
            assert r["audio"] is (r["resolution"] != "256p")

    assert result.reject_reasons == {"variants[].slots: no value for a placeholder": 1,
                                     "variants[].variant_id: duplicate": 1,
                                     "variants[].localized_dialogue: missing for a target locale": 1,
                                     "variants[].slots: a value the prompt does not use": 4}

    ids = [r["render_id"] for r in requests]
    assert len(set(ids)) == len(ids) == 16 + 9 * len(RESOLUTIONS)
    again = plan(tmp_path / "briefs.parquet", model_id="magihuman-distill")
    assert again.requests.column("render_id").to_pylist() == ids


def test_a_cell_that_is_not_utf8_rejects_its_row_naming_the_field_and_the_rest_plans(ray_session, tmp_path):
    """Raw bytes under a string type (as a writer that skips validation leaves them)."""
    good = [{"brief_id": f"b{i}", "campaign_id": "c", "prompt": "A quiet street.", "source_locale": "en-US"}
            for i in range(3)]
    table = pa.Table.from_pylist(good, schema=BRIEF_ARROW_SCHEMA)
    for name, row in (("brief_id", 1), ("prompt", 2)):
        values = [v.encode() for v in table.column(name).to_pylist()]
        values[row] = b"caf\xe9 \xff"  # Latin-1 bytes, not UTF-8
        column = pa.array(values, pa.binary()).view(pa.string())
        table = table.set_column(table.column_names.index(name), name, column)
    pq.write_table(table, tmp_path / "briefs.parquet")

    result = plan(tmp_path / "briefs.parquet", model_id="tiny")
    assert result.requests.column("brief_id").to_pylist() == ["b0"]
    rejects = {r["row_index"]: r for r in result.rejects.to_pylist()}
    assert sorted(rejects) == [1, 2]
    assert rejects[1]["reason"].startswith("brief_id: not UTF-8 text (b'caf\\xe9 \\xff')")
    assert "save the briefs file with UTF-8 strings" in rejects[1]["reason"]
    assert rejects[2]["reason"].startswith("prompt: not UTF-8 text") and rejects[2]["brief_id"] == "b2"
    assert json.loads(rejects[2]["raw"])["brief_id"] == "b2"
