"""Fan-out counts, render_id determinism and the model's prompt layout."""

from __future__ import annotations

import pytest

from pipeline.expand import compose_prompt, expand_brief, request_render_id, space_cjk, with_take
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
        "takes": 2,
        "seed": 7,
    }
    fields.update(overrides)
    return CampaignBrief.model_validate(fields)


def ids(brief: CampaignBrief, model_id: str = "tiny") -> list[str]:
    return [r.render_id for r in expand_brief(brief, 0, model_id)]


def test_fan_out_is_locales_times_aspects_times_takes():
    requests = expand_brief(make_brief(), 0, "tiny")
    assert len(requests) == 3 * 3 * 2
    assert len({r.render_id for r in requests}) == len(requests)
    assert {(r.locale, r.aspect_ratio, r.take) for r in requests} == {
        (loc, asp, v) for loc in ("en-US", "de-DE", "ja-JP") for asp in ("16:9", "9:16", "1:1") for v in (0, 1)
    }
    assert {r.seed for r in requests} == {7, 8}


def test_defaults_make_one_request():
    brief = CampaignBrief(brief_id="b", campaign_id="c", prompt="A beach.", source_locale="fr-FR")
    (request,) = expand_brief(brief, 3, "tiny")
    assert (request.locale, request.language, request.aspect_ratio) == ("fr-FR", "French", "16:9")
    assert (request.duration_s, request.resolution, request.take, request.row_index) == (5, "540p", 0, 3)
    assert (request.width, request.height) == (960, 540)
    assert request.num_frames == 125
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

    before = english_ids(make_brief(takes=1))
    after = english_ids(make_brief(takes=1, **change))
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
        'A woman smiles. Woman in linen shirt says, "Hallo!" Then Man says, "Tschüss."\n\n'
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
             for r in expand_brief(make_brief(resolution=res, takes=1, locales=["en-US"]), 0, "tiny")}
    assert sizes[("16:9", "256p")] == (448, 256)
    assert sizes[("9:16", "540p")] == (540, 960)
    assert sizes[("1:1", "1080p")] == (1080, 1080)
    assert sizes[("16:9", "1080p")][:2] == (1920, 1080)


# --------------------------------------------------------------------------- creative variants


def variant_brief(**overrides) -> CampaignBrief:
    """Two creative variants filling {person} and {city}; the second replaces dialogue and sound."""
    fields = {
        "brief_id": "city", "campaign_id": "spring", "source_locale": "en-US",
        "prompt": "A {person} opens a bottle of {{Lumen}} on a rooftop in {city}.",
        "dialogue": [{"speaker": "Presenter", "line": "Spring tastes better."}],
        "localized_dialogue": [{"locale": "de-DE", "lines": [{"speaker": "Presenter", "line": "Frühling!"}]}],
        "locales": ["en-US", "de-DE"], "aspect_ratios": ["4:5", "21:9", "16:9"], "resolution": "720p",
        "takes": 2, "seed": 40, "background_sound": "Wind",
        "variants": [
            {"variant_id": "paris", "slots": {"person": "woman", "city": "Paris"}},
            {"variant_id": "tokyo", "slots": {"person": "man", "city": "Tokyo"}, "background_sound": "Traffic",
             "dialogue": [{"speaker": "Man", "line": "Cheers."}],
             "localized_dialogue": [{"locale": "de-DE", "lines": [{"speaker": "Man", "line": "Prost."}]}]},
        ],
    }
    fields.update(overrides)
    return CampaignBrief.model_validate(fields)


def test_fan_out_is_variants_times_locales_times_aspects_times_takes():
    requests = expand_brief(variant_brief(), 0, "tiny")
    assert len(requests) == 2 * 2 * 3 * 2
    assert {(r.variant_id, r.locale, r.aspect_ratio, r.take, r.seed) for r in requests} == {
        (v, loc, asp, take, 40 + take) for v in ("paris", "tokyo") for loc in ("en-US", "de-DE")
        for asp in ("4:5", "21:9", "16:9") for take in (0, 1)
    }
    assert len({r.render_id for r in requests}) == len(requests)
    assert [r.render_id for r in requests] == [r.render_id for r in expand_brief(variant_brief(), 0, "tiny")]


def test_variants_fill_the_slots_and_replace_what_they_override():
    requests = {(r.variant_id, r.locale): r for r in expand_brief(variant_brief(takes=1), 0, "tiny")}
    paris_de = requests[("paris", "de-DE")]
    assert paris_de.prompt.startswith("A woman opens a bottle of {Lumen} on a rooftop in Paris.")
    assert paris_de.prompt == (
        'A woman opens a bottle of {Lumen} on a rooftop in Paris. Presenter says, "Frühling!"\n\n'
        'Dialogue:\n<Presenter, German>: "Frühling!"\n\n'
        "Background Sound:\n<Wind>"
    )
    tokyo_de = requests[("tokyo", "de-DE")]
    assert tokyo_de.prompt == (
        'A man opens a bottle of {Lumen} on a rooftop in Tokyo. Man says, "Prost."\n\n'
        'Dialogue:\n<Man, German>: "Prost."\n\n'
        "Background Sound:\n<Traffic>"
    )
    assert tokyo_de.background_sound == "Traffic" and [d.line for d in tokyo_de.dialogue] == ["Prost."]
    assert [d.line for d in requests[("tokyo", "en-US")].dialogue] == ["Cheers."]


def test_a_variant_may_replace_the_prompt():
    brief = variant_brief(variants=[{"variant_id": "beach", "prompt": "A {animal} on a beach.",
                                     "slots": {"animal": "dog"}}], takes=1, locales=["en-US"])
    assert all(r.prompt.startswith("A dog on a beach.") for r in expand_brief(brief, 0, "tiny"))


@pytest.mark.parametrize("resolution", ["256p", "540p", "720p", "1080p"])
def test_every_format_has_its_delivery_and_generation_size(resolution):
    from model.magihuman.sizes import BASE_SIZES
    from schemas.formats import ASPECT_RATIOS, GENERATION_SIZES, delivery_size

    brief = make_brief(aspect_ratios=list(ASPECT_RATIOS), resolution=resolution, locales=["en-US"], takes=1)
    requests = expand_brief(brief, 0, "tiny")
    assert [r.aspect_ratio for r in requests] == list(ASPECT_RATIOS)
    for r in requests:
        assert (r.width, r.height) == delivery_size(resolution, r.aspect_ratio)
        assert BASE_SIZES[r.aspect_ratio] == GENERATION_SIZES[r.aspect_ratio]["base"]
    assert len({r.render_id for r in requests}) == len(ASPECT_RATIOS)


def test_new_fields_at_their_defaults_keep_the_old_ids():
    plain = make_brief()
    spelled_out = make_brief(variants=[{"variant_id": "main"}], negative_prompt=None, audio=True)
    assert ids(plain) == ids(spelled_out)
    assert [r.variant_id for r in expand_brief(plain, 0, "tiny")] == ["main"] * 18


@pytest.mark.parametrize("change", [
    {"variants": [{"variant_id": "alt"}]},
    {"negative_prompt": "blurry, text overlays"},
    {"audio": False},
])
def test_new_fields_off_their_defaults_change_the_id(change):
    assert set(ids(make_brief())).isdisjoint(ids(make_brief(**change)))
    assert ids(make_brief(**change)) == ids(make_brief(**change))


def test_negative_prompt_and_audio_are_carried_on_the_request():
    (request, *_) = expand_brief(make_brief(negative_prompt="watermark", audio=False), 0, "tiny")
    assert (request.negative_prompt, request.audio) == ("watermark", False)


def test_integer_variants_are_read_as_takes():
    old = make_brief(takes=None, variants=3)  # the pre-variants meaning: seeds per clip
    assert (old.takes, old.variants) == (3, None)
    assert ids(old) == ids(make_brief(takes=3))


def test_a_variant_without_a_needed_translation_is_refused():
    brief = variant_brief(variants=[{"variant_id": "new-line", "dialogue": [{"speaker": "A", "line": "New."}]}],
                          prompt="A kitchen.")
    with pytest.raises(ValueError, match="variant 'new-line' has no dialogue in de-DE"):
        expand_brief(brief, 0, "tiny")


def test_fan_out_summary_per_brief():
    import pyarrow as pa

    from pipeline.expand import summarize_fan_out
    from schemas.render import RENDER_REQUEST_ARROW_SCHEMA

    requests = [*expand_brief(variant_brief(duration_s=4), 0, "magihuman-base"),
                *expand_brief(make_brief(negative_prompt="blur"), 1, "magihuman-distill")]
    table = pa.Table.from_pylist([r.model_dump() for r in requests], schema=RENDER_REQUEST_ARROW_SCHEMA)
    city, hero = summarize_fan_out(table)
    assert (city.brief_id, city.variants, city.locales, city.aspect_ratios, city.takes) == ("city", 2, 2, 3, 2)
    assert (city.requests, city.clip_seconds, city.warnings) == (24, 96, [])
    assert city.line == "city: 2 variants x 2 locales x 3 aspects x 2 takes = 24 requests, 96 clip-seconds"
    assert (hero.variants, hero.locales, hero.aspect_ratios, hero.takes, hero.requests) == (1, 3, 3, 2, 18)
    assert hero.clip_seconds == 18 * 5
    (warning,) = hero.warnings
    assert "negative_prompt is ignored" in warning and "magihuman-distill" in warning


def test_another_take_of_a_request_is_the_take_expand_would_plan():
    planned = expand_brief(CampaignBrief.model_validate({
        "brief_id": "b-takes", "campaign_id": "c", "prompt": "A dog runs on the beach.", "source_locale": "en-US",
        "duration_s": 2, "resolution": "256p", "seed": 5, "takes": 3}), 0, "tiny")
    assert [request_render_id(r) for r in planned] == [r.render_id for r in planned]
    assert with_take(planned[0], 2) == planned[2]
    fourth = with_take(planned[1], 3)
    assert (fourth.take, fourth.seed) == (3, 8) and fourth.render_id not in {r.render_id for r in planned}
