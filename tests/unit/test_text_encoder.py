import pytest
import torch

from model.magihuman.text_encoder import TEXT_LENGTH, TextEncoder, byte_level_tokenizer

NEGATIVE = "low quality, static, blurred details"


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.tiny(NEGATIVE, cache_size=2)


def test_tokenizer_covers_any_utf8_and_round_trips():
    tok = byte_level_tokenizer()
    text = 'A chef says "¡Hola!" — 你 好, 안녕'
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id == 2 and tok.pad_token_id == 0
    assert tok.unk_token_id not in ids
    assert len(ids) == 1 + len(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_embedding_is_padded_to_text_length_and_keeps_real_length(encoder):
    prompt = "A woman in a red coat waves at the camera."
    e = encoder.encode(prompt)
    assert e.embedding.shape == (TEXT_LENGTH, encoder.hidden_size)
    assert e.length == 1 + len(prompt.encode())
    assert e.embedding[: e.length].abs().sum(dim=1).min() > 0
    assert torch.count_nonzero(e.embedding[e.length :]) == 0


def test_long_prompts_are_encoded_whole_then_trimmed_to_text_length(encoder):
    prompt = "word " * 200 + "Dialogue: the end of the prompt changes the start's embedding."
    e = encoder.encode(prompt)
    assert e.length == TEXT_LENGTH and e.embedding.shape[0] == TEXT_LENGTH
    # As the reference: the encoder sees every token (bidirectional attention), the embedding is cut after.
    ids = encoder.tokenizer([prompt], return_tensors="pt")
    assert ids.input_ids.shape[1] > TEXT_LENGTH
    with torch.inference_mode():
        whole = encoder.model(**ids).last_hidden_state[0]
        cut_first = encoder.model(input_ids=ids.input_ids[:, :TEXT_LENGTH],
                                  attention_mask=ids.attention_mask[:, :TEXT_LENGTH]).last_hidden_state[0]
    torch.testing.assert_close(e.embedding, whole[:TEXT_LENGTH])
    assert not torch.allclose(e.embedding, cut_first, atol=1e-4)


def test_cache_hits_on_repeated_prompts_and_evicts_least_recent():
    enc = TextEncoder.tiny(NEGATIVE, cache_size=2)
    a1 = enc.encode("scene A")
    a2 = enc.encode("scene A")
    assert a2 is a1
    assert (enc.hits, enc.misses, enc.forward_calls) == (1, 1, 1)
    enc.encode("scene B")
    enc.encode("scene A")  # refreshes A
    enc.encode("scene C")  # evicts B, the least recently used
    assert enc.cache_info()["size"] == 2
    calls = enc.forward_calls
    enc.encode("scene A")
    assert enc.forward_calls == calls
    enc.encode("scene B")
    assert enc.forward_calls == calls + 1
    recomputed = enc.encode("scene A")
    assert torch.equal(recomputed.embedding, a1.embedding)


def test_batch_matches_single_prompts(encoder):
    prompts = ["short", "a much longer prompt about a dog on a beach", "short"]
    text, lens = encoder.encode_batch(prompts)
    assert text.shape == (3, TEXT_LENGTH, encoder.hidden_size)
    assert lens.tolist() == [encoder.encode(p).length for p in prompts]
    assert torch.equal(text[1], encoder.encode(prompts[1]).embedding)
    assert torch.equal(text[0], text[2])
    assert not torch.equal(text[0], text[1])


def test_null_embedding_is_computed_once():
    enc = TextEncoder.tiny(NEGATIVE)
    first = enc.null_embedding()
    calls = enc.forward_calls
    assert enc.null_embedding() is first
    assert enc.forward_calls == calls == 1
    assert first.length == 1 + len(NEGATIVE.encode())
    # The null prompt does not take a slot in the prompt cache.
    assert enc.cache_info()["size"] == 0


def test_same_seed_same_weights_other_seed_differs():
    a = TextEncoder.tiny(NEGATIVE, seed=1).encode("x y z").embedding
    b = TextEncoder.tiny(NEGATIVE, seed=1).encode("x y z").embedding
    c = TextEncoder.tiny(NEGATIVE, seed=2).encode("x y z").embedding
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_released_loader_names_the_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "t5gemma")):
        TextEncoder.from_pretrained(tmp_path / "t5gemma", NEGATIVE)


def test_released_loader_reads_a_saved_checkpoint_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = TextEncoder.tiny(NEGATIVE, seed=3)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = TextEncoder.from_pretrained(tmp_path, NEGATIVE, dtype=torch.float32)
    prompt = "A man opens a bottle of soda."
    expected = tiny.encode(prompt)
    got = loaded.encode(prompt)
    assert got.length == expected.length
    torch.testing.assert_close(got.embedding, expected.embedding)
