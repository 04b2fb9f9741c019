"""T5Gemma text encoder: prompt text -> padded embedding + real length, cached per replica.

The released stack uses the encoder half of google/t5gemma-9b-9b-ul2 (hidden 3584). As the
reference does (prompt_process.get_padded_t5_gemma_embedding), the whole prompt is encoded and the
embedding is then padded or trimmed to 640 tokens: a long prompt's first 640 token embeddings still
saw the rest of the prompt through the encoder's bidirectional attention. Replicas see the same prompts many times (localized
variants share scene text, re-runs repeat prompts, CFG needs the negative prompt every clip), so
embeddings are cached by prompt text and the negative-prompt embedding is computed once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast, T5GemmaEncoderModel
from transformers.models.t5gemma.configuration_t5gemma import T5GemmaConfig, T5GemmaModuleConfig

from .sizes import TEXT_LENGTH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyT5GemmaConfig:
    """A T5Gemma encoder small enough for CPU tests; same code path as the 9B one."""

    hidden_size: int = 96  # must equal the tiny DiT's text_in_channels
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 48


@dataclass(frozen=True)
class TextEmbedding:
    embedding: torch.Tensor  # [TEXT_LENGTH, hidden], zero after `length`
    length: int  # real token count (<= TEXT_LENGTH)


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built in code (no download): ids 0-3 are pad/eos/bos/unk as in
    Gemma's vocabulary, then one id per byte, so any UTF-8 prompt tokenizes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(specials + sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a local T5Gemma folder (tokenizer.json and its config, as the hub ships them)."""
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def tiny_t5gemma_encoder(tiny: TinyT5GemmaConfig, vocab_size: int, seed: int = 0) -> T5GemmaEncoderModel:
    module = dict(
        vocab_size=vocab_size,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        head_dim=tiny.head_dim,
        query_pre_attn_scalar=tiny.head_dim,
        max_position_embeddings=2 * TEXT_LENGTH,
        sliding_window=2 * TEXT_LENGTH,
    )
    config = T5GemmaConfig(
        encoder=T5GemmaModuleConfig(**module),
        decoder=T5GemmaModuleConfig(**module, is_decoder=True),
        is_encoder_decoder=False,
        vocab_size=vocab_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5GemmaEncoderModel(config)


class TextEncoder:
    """Encodes prompts to fixed-length embeddings with an LRU cache keyed by prompt text."""

    def __init__(
        self,
        model: T5GemmaEncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        negative_prompt: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_size: int = 256,
        text_length: int = TEXT_LENGTH,
    ):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.negative_prompt = negative_prompt
        self.device = torch.device(device)
        self.dtype = dtype
        self.cache_size = cache_size
        self.text_length = text_length
        self.hits = 0
        self.misses = 0
        self.forward_calls = 0
        self._cache: OrderedDict[str, TextEmbedding] = OrderedDict()
        self._null: TextEmbedding | None = None
        # The next batch's prompts may be encoded (GeneratorConfig.text_encoder_device) while this one's are read.
        self._lock = threading.RLock()

    @property
    def hidden_size(self) -> int:
        return self.model.config.encoder.hidden_size

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        negative_prompt: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        cache_size: int = 256,
    ) -> TextEncoder:
        """Load from a local copy of google/t5gemma-9b-9b-ul2 (config.json, tokenizer files,
        safetensors). Never touches the network."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder: expected a T5Gemma checkpoint with config.json at {path} "
                "(a local copy of google/t5gemma-9b-9b-ul2)"
            )
        tokenizer = load_tokenizer(path)
        model = T5GemmaEncoderModel.from_pretrained(path, is_encoder_decoder=False, dtype=dtype, local_files_only=True)
        return cls(model, tokenizer, negative_prompt, device=device, dtype=dtype, cache_size=cache_size)

    @classmethod
    def tiny(
        cls,
        negative_prompt: str,
        config: TinyT5GemmaConfig = TinyT5GemmaConfig(),
        device: str | torch.device = "cpu",
        cache_size: int = 256,
        seed: int = 0,
    ) -> TextEncoder:
        tokenizer = byte_level_tokenizer()
        model = tiny_t5gemma_encoder(config, vocab_size=len(tokenizer), seed=seed)
        return cls(model, tokenizer, negative_prompt, device=device, dtype=torch.float32, cache_size=cache_size)

    @torch.inference_mode()
    def _encode(self, prompt: str) -> TextEmbedding:
        # One prompt per forward: no padding inside the encoder, so a prompt's embedding does not
        # depend on what it was batched with.
        self.forward_calls += 1
        tokens = self.tokenizer([prompt], return_tensors="pt").to(self.device)
        hidden = self.model(**tokens).last_hidden_state[0]
        if hidden.shape[0] > self.text_length:
            log.warning("prompt of %d tokens: the model reads the first %d (%.60r...)",
                        hidden.shape[0], self.text_length, prompt)
        length = min(hidden.shape[0], self.text_length)
        padded = hidden.new_zeros(self.text_length, hidden.shape[1])
        padded[:length] = hidden[:length]
        return TextEmbedding(padded, length)

    def encode(self, prompt: str) -> TextEmbedding:
        with self._lock:
            return self._encode_cached(prompt)

    def _encode_cached(self, prompt: str) -> TextEmbedding:
        cached = self._cache.get(prompt)
        if cached is not None:
            self.hits += 1
            self._cache.move_to_end(prompt)
            return cached
        self.misses += 1
        embedding = self._encode(prompt)
        self._cache[prompt] = embedding
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embedding

    def encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> embeddings [B, text_length, hidden], lengths [B] (int64, on the encoder's device)."""
        embeddings = [self.encode(p) for p in prompts]
        stacked = torch.stack([e.embedding for e in embeddings])
        lengths = torch.tensor([e.length for e in embeddings], device=self.device)
        return stacked, lengths

    def null_embedding(self) -> TextEmbedding:
        """The negative-prompt embedding used for CFG; computed on first use, once per replica."""
        with self._lock:
            if self._null is None:
                self._null = self._encode(self.negative_prompt)
            return self._null

    def cache_info(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._cache), "max_size": self.cache_size}
