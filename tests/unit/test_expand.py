"""Fan-out counts, render_id determinism and the model's prompt layout."""

from __future__ import annotations

import pytest

from pipeline.expand import compose_prompt, expand_brief, space_cjk
from schemas.brief import CampaignBrief, DialogueLine
from schemas.locales import canonical_locale, language_for_locale


def make_brief(**overrides) -> CampaignBrief:
    fields = {
        "brief_id": "hero",
        "campaign_id": "spring",
        "prompt": "A woman smiles at the camera in a bright kitchen.",
        "source_locale": "en-US",
        "dialogue": [{"speaker": "Woman in linen shirt", "line": "Spring tastes better."}],
        "localized_dialogue": [
            {"locale": "de-DE", "lines": [{"speaker": "Woman in linen shirt", "line": "Der Frühling schmeckt besser."}]},
            {"locale": "ja-JP", "lines": [{"speaker": "Woman in linen shirt", "line": "春はもっとおいしく。"}]},
        ],
        "locales": ["en-US", "de-DE", "ja-JP"],
        "aspect_ratios": ["16:9", "9:16", "1:1"],
        "variants": 2,
        "seed": 7,
    }
    fields.update(overrides)
    return CampaignBrief.model_validate(fields)


def ids(brief: CampaignBrief, model_id: str = "tiny") -> list[str]:
    return [r.render_id for r in expand_brief(brief, 0, model_id)]


def test_fan_out_is_locales_times_aspects_times_variants():
    requests = expand_brief(make_brief(), 0, "tiny")
    assert len(requests) == 3 * 3 * 2
    assert len({r.render_id for r in requests}) == len(requests)
    assert {(r.locale, r.aspect_ratio, r.variant_index) for r in requests} == {
        (loc, asp, v) for loc in ("en-US", "de-DE", "ja-JP") for asp in ("16:9", "9:16", "1:1") for v in (0, 1)
    }
    assert {r.seed for r in requests} == {7, 8}


def test_defaults_make_one_request():
    brief = CampaignBrief(brief_id="b", campaign_id="c", prompt="A beach.", source_locale="fr-FR")
    (request,) = expand_brief(brief, 3, "tiny")
    assert (request.locale, request.language, request.aspect_ratio) == ("fr-FR", "French", "16:9")
    assert (request.duration_s, request.resolution, request.variant_index, request.row_index) == (5, "540p", 0, 3)
    assert (request.width, request.height) == (960, 540)
    assert request.num_frames == 126
    assert request.seed == brief.base_seed  # derived from brief_id, stable across runs
    assert CampaignBrief(brief_id="b", campaign_id="x", prompt="y", source_locale="en-US").base_seed == brief.base_seed


def test_render_ids_are_deterministic():
    assert ids(make_brief()) == ids(make_brief())


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "A man smiles at the camera in a bright kitchen."},
        {"dialogue": [{"speaker": "Woman in linen shirt", "line": "Spring tastes best."}]},
        {"duration_s": 6},
        {"resolution": "1080p"},
        {"seed": 8},
        {"background_sound": "Rain on the window"},
        {"reference_image_uri": "s3://bucket/first-frame.png"},
    ],
)
def test_anything_that_changes_the_clip_changes_the_id(change):
    def english_ids(brief: CampaignBrief) -> set[str]:
        return {r.render_id for r in expand_brief(brief, 0, "tiny") if r.locale == "en-US"}

    before = english_ids(make_brief(variants=1))
    after = english_ids(make_brief(variants=1, **change))
    assert len(before) == len(after) == 3
    assert before.isdisjoint(after)


def test_a_translation_change_touches_only_its_locale():
    changed = make_brief(localized_dialogue=[
        {"locale": "de-DE", "lines": [{"speaker": "Woman in linen shirt", "line": "Frühling!"}]},
        {"locale": "ja-JP", "lines": [{"speaker": "Woman in linen shirt", "line": "春はもっとおいしく。"}]},
    ])
    before = {(r.locale, r.render_id) for r in expand_brief(make_brief(), 0, "tiny")}
    after = {(r.locale, r.render_id) for r in expand_brief(changed, 0, "tiny")}
    assert {loc for loc, _ in before ^ after} == {"de-DE"}


def test_model_id_is_part_of_the_id():
    assert set(ids(make_brief(), "tiny")).isdisjoint(ids(make_brief(), "magihuman-distill"))


def test_prompt_layout_follows_the_trained_format():
    prompt = compose_prompt(
        "A woman smiles.",
        [DialogueLine(speaker="Woman in linen shirt", line="Hallo!"), DialogueLine(speaker="Man", line="Tschüss.")],
        "German",
        "Kitchen ambience",
    )
    assert prompt == (
        "A woman smiles.\n\n"
        "Dialogue:\n"
        '<Woman in linen shirt, German>: "Hallo!"\n'
        '<Man, German>: "Tschüss."\n\n'
        "Background Sound:\n"
        "<Kitchen ambience>"
    )


def test_prompt_without_dialogue_or_sound():
    assert compose_prompt("Bubbles rise.", [], "English", None) == (
        "Bubbles rise.\n\nBackground Sound:\n<No prominent background sound>"
    )


def test_localized_request_carries_target_language_lines():
    requests = expand_brief(make_brief(), 0, "tiny")
    ja = next(r for r in requests if r.locale == "ja-JP")
    assert ja.language == "Japanese"
    assert '<Woman in linen shirt, Japanese>: "春 は も っ と お い し く。"' in ja.prompt
    assert ja.prompt.startswith("A woman smiles at the camera")  # the scene stays English
    assert [d.line for d in ja.dialogue] == ["春はもっとおいしく。"]


def test_cjk_spacing():
    assert space_cjk("你好，世界") == "你 好，世 界"
    assert space_cjk("나 비번 알아.") == "나 비 번 알 아."
    assert space_cjk("Lumen 春") == "Lumen 春"


@pytest.mark.parametrize(
    "tag, language",
    [
        ("en-GB", "English"), ("en", "English"), ("de-AT", "German"), ("fr-CA", "French"),
        ("ja-JP", "Japanese"), ("ko-KR", "Korean"), ("zh-CN", "Mandarin"), ("zh-SG", "Mandarin"),
        ("zh-TW", "Mandarin"), ("cmn-Hans-CN", "Mandarin"), ("zh-HK", "Cantonese"), ("zh-MO", "Cantonese"),
        ("yue-HK", "Cantonese"), ("es-ES", None), ("ja", None), ("zh", None), ("pt-BR", None), ("ko-KP", None),
    ],
)
def test_locale_to_language(tag, language):
    assert language_for_locale(canonical_locale(tag)) == language


def test_sizes_per_aspect_and_resolution():
    sizes = {(r.aspect_ratio, r.resolution): (r.width, r.height)
             for res in ("256p", "540p", "1080p")
             for r in expand_brief(make_brief(resolution=res, variants=1, locales=["en-US"]), 0, "tiny")}
    assert sizes[("16:9", "256p")] == (448, 256)
    assert sizes[("9:16", "540p")] == (540, 960)
    assert sizes[("1:1", "1080p")] == (1080, 1080)
    assert sizes[("16:9", "1080p")][:2] == (1920, 1080)
