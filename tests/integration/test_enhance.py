"""The enhance stage against a loopback chat-completions endpoint: answers checked, cached in the
DAM, and the template kept (with the reason, and a warning) when the endpoint is down."""

from __future__ import annotations

import logging

import pytest
from chat_server import FILLER, chat_server, good_answer

from conftest import free_port
from pipeline.dam import open_dam
from pipeline.enhance import AnswerError, EnhancePrompts, PromptLLMConfig, check_answer, distinct_inputs, user_message
from pipeline.expand import expand_brief
from schemas.brief import CampaignBrief

BRIEF = CampaignBrief(brief_id="b", campaign_id="c", prompt="A woman smiles.", source_locale="ja-JP",
                      dialogue=[{"speaker": "Ana", "line": "春はもっとおいしく。"}], aspect_ratios=["16:9", "1:1"])


def requests(llm):
    return expand_brief(BRIEF, 0, "tiny", prompt_llm=llm.identity())


def test_answers_are_cached_and_ids_do_not_depend_on_them(tmp_path):
    with chat_server() as (server, url):
        llm = PromptLLMConfig(url=url, model="writer")
        todo = requests(llm)
        inputs = distinct_inputs(todo, llm)
        assert inputs.num_rows == 1  # two aspect ratios, one prompt to write
        stage = EnhancePrompts(llm, open_dam(tmp_path / "dam"))
        (row,) = stage(inputs).to_pylist()
        assert row["prompt_source"] == "llm" and '"春 は も っ と お い し く 。"' not in row["prompt"]
        assert '"春 は も っ と お い し く。"' in row["prompt"]
        assert server.calls == 1 and server.bodies[0]["messages"][0]["role"] == "system"
        assert stage(inputs).to_pylist() == [row] and server.calls == 1  # from the DAM's cache
    assert [r.render_id for r in requests(llm)] == [r.render_id for r in todo]
    assert requests(llm)[0].render_id != expand_brief(BRIEF, 0, "tiny")[0].render_id  # the settings count


def test_endpoint_down_keeps_the_template_with_a_warning(tmp_path, caplog):
    llm = PromptLLMConfig(url=f"http://127.0.0.1:{free_port()}/v1", model="writer", max_attempts=2, backoff_s=0.01)
    todo = requests(llm)
    with caplog.at_level(logging.WARNING, logger="pipeline.enhance"):
        (row,) = EnhancePrompts(llm, open_dam(tmp_path / "dam"))(distinct_inputs(todo, llm)).to_pylist()
    assert row["prompt"] == todo[0].prompt
    assert row["prompt_source"].startswith("template (fallback: endpoint failed: http://127.0.0.1:")
    assert "after 2 tries" in row["prompt_source"]
    assert "using the template prompt" in caplog.text
    assert not (tmp_path / "dam" / "prompt_cache").exists()  # a failure is never cached


def test_answer_checks_name_what_is_wrong():
    (request, _) = requests(PromptLLMConfig(url="http://x/v1", model="m"))
    good = good_answer(user_message(request))
    assert check_answer(good, request).endswith("Background Sound:\n<No prominent background sound>")
    with pytest.raises(AnswerError, match="dialogue row 1 is not"):
        check_answer(good.replace("お い し く", "う ま く"), request)
    with pytest.raises(AnswerError, match="main body of .* words"):
        check_answer(good.replace(FILLER, ""), request)
    with pytest.raises(AnswerError, match="no 'Background Sound:'"):
        check_answer(good.replace("Background Sound:", "Sound:"), request)
