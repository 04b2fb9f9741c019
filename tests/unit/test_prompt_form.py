"""The template composer against the rules of the reference's enhanced-prompt design, in each of
the seven languages the model speaks."""

from __future__ import annotations

import re

import pytest

from pipeline.expand import NO_BACKGROUND_SOUND, _CJK, expand_brief
from schemas.brief import CampaignBrief

# locale, the model's language name, two lines in that language
LANGUAGES = [
    ("en-US", "English", ["Spring tastes better.", "Try it today."]),
    ("de-DE", "German", ["Frühling schmeckt besser.", "Probier es heute."]),
    ("fr-FR", "French", ["Le printemps a meilleur goût.", "Goûtez-le aujourd'hui."]),
    ("ja-JP", "Japanese", ["春はもっとおいしく。", "今日ためしてね。"]),
    ("ko-KR", "Korean", ["봄은 더 맛있어요.", "오늘 드셔 보세요."]),
    ("zh-CN", "Mandarin", ["春天更好喝。", "今天就试试吧。"]),
    ("zh-HK", "Cantonese", ["春天更好飲。", "今日就試吓啦。"]),
]
ADJACENT_CJK = re.compile(f"[{_CJK}][{_CJK}]")


def brief_in(locale: str, lines: list[str], **extra) -> CampaignBrief:
    return CampaignBrief(
        brief_id="b1", campaign_id="c1", prompt="A woman in a linen shirt smiles at the camera in a bright kitchen.",
        source_locale=locale, dialogue=[{"speaker": "Ana", "line": lines[0]}, {"speaker": "Ben", "line": lines[1]}],
        speakers=[{"speaker": "Ana", "description": "Woman in linen shirt"}], **extra)


@pytest.mark.parametrize("locale,language,lines", LANGUAGES, ids=[lang for _, lang, _ in LANGUAGES])
def test_template_follows_the_design_in_every_language(locale, language, lines):
    (request,) = expand_brief(brief_in(locale, lines, background_sound="Kettle whistling"), 0, "tiny")
    assert request.language == language
    body, dialogue, sound = request.prompt.split("\n\n")

    # the main body: the English scene first, then each line woven in, in order, said by its description
    assert body.startswith("A woman in a linen shirt smiles at the camera in a bright kitchen. ")
    spaced = [re.sub(f"(?<=[{_CJK}])(?=[{_CJK}])", " ", line) for line in lines]
    first = body.index(f'Woman in linen shirt says, "{spaced[0]}"')
    second = body.index(f'Then Ben says, "{spaced[1]}"')  # no description given: the speaker's name
    assert first < second

    # the Dialogue block: <description, Language>: "line" rows in the target language
    assert dialogue.split("\n") == ["Dialogue:", f'<Woman in linen shirt, {language}>: "{spaced[0]}"',
                                    f'<Ben, {language}>: "{spaced[1]}"']
    assert sound == "Background Sound:\n<Kettle whistling>"
    # every line appears exactly twice: woven into the body, and in its row
    assert all(request.prompt.count(f'"{line}"') == 2 for line in spaced)
    assert not ADJACENT_CJK.search(request.prompt)  # CJK letters spaced everywhere
    if language in ("Japanese", "Korean", "Mandarin", "Cantonese"):
        assert spaced != lines  # the check above had letters to space


def test_fixed_no_background_sentence_and_cjk_spacing_outside_the_dialogue():
    brief = CampaignBrief(brief_id="b2", campaign_id="c1", prompt="A bottle of 春茶 on wet slate.",
                          source_locale="zh-CN")
    (request,) = expand_brief(brief, 0, "tiny")
    assert request.prompt == f"A bottle of 春 茶 on wet slate.\n\nBackground Sound:\n<{NO_BACKGROUND_SOUND}>"
    assert NO_BACKGROUND_SOUND == "No prominent background sound"


def test_speaker_descriptions_are_part_of_the_render_id():
    plain = brief_in("en-US", LANGUAGES[0][2])
    described = plain.model_copy(update={"speakers": None})
    assert expand_brief(plain, 0, "tiny")[0].render_id != expand_brief(described, 0, "tiny")[0].render_id


def test_speakers_column_rejects_duplicates_and_markup():
    with pytest.raises(ValueError, match="speakers: more than one description for Ana"):
        brief_in("en-US", LANGUAGES[0][2]).model_validate({
            **brief_in("en-US", LANGUAGES[0][2]).model_dump(),
            "speakers": [{"speaker": "Ana", "description": "a"}, {"speaker": "Ana", "description": "b"}]})
    with pytest.raises(ValueError, match="without <, >, quotes or line breaks"):
        CampaignBrief.model_validate({**brief_in("en-US", LANGUAGES[0][2]).model_dump(),
                                      "speakers": [{"speaker": "Ana", "description": "<Woman>"}]})
