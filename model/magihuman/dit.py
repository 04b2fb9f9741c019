"""The daVinci-MagiHuman joint audio-video DiT, top to bottom, in plain PyTorch.

One sample is one token sequence: video patches, then audio latents, then the real text
tokens. A batch is packed as [B, S, hidden] with every sample laid out the same way
(video | audio | text padded to the longest prompt); padded text tokens are masked out of
attention keys and dropped at the end, so a batch computes what its samples compute alone.

Numerics follow the reference: the large linear layers run in bf16 (`compute_dtype`) on
bf16 weights, attention runs in the compute dtype, while the residual stream, norms, RoPE,
activations, adapter and final projections stay in fp32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ArchConfig, CoordsStyle

LocalAttentionBackend = Literal["auto", "dense", "flex"]


# --------------------------------------------------------------------------------------------
# Token layout and attention masks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLayout:
    """Where each modality sits in the packed sequence of every sample: video | audio | text."""

    num_frames: int
    tokens_per_frame: int
    num_audio: int
    text_lens: tuple[int, ...]

    @property
    def batch_size(self) -> int:
        return len(self.text_lens)

    @property
    def num_video(self) -> int:
        return self.num_frames * self.tokens_per_frame

    @property
    def num_text(self) -> int:
        """Text segment length: the longest prompt in the batch."""
        return max(self.text_lens)

    @property
    def segments(self) -> tuple[int, int, int]:
        return (self.num_video, self.num_audio, self.num_text)

    @property
    def seq_len(self) -> int:
        return sum(self.segments)

    @property
    def has_text_padding(self) -> bool:
        return min(self.text_lens) != self.num_text

    def valid_lens(self, device: torch.device) -> torch.Tensor:
        """Real tokens per sample (everything before its text padding), [B]."""
        return torch.tensor(self.text_lens, device=device) + self.num_video + self.num_audio

    def token_frames(self, device: torch.device) -> torch.Tensor:
        """Latent frame of each video token, -1 for audio and text tokens, [S]."""
        frames = torch.full((self.seq_len,), -1, dtype=torch.long, device=device)
        frames[: self.num_video] = torch.arange(self.num_frames, device=device).repeat_interleave(self.tokens_per_frame)
        return frames


def frame_local_allowed(
    q_frame: torch.Tensor, k_frame: torch.Tensor, frame_receptive_field: int | torch.Tensor
) -> torch.Tensor:
    """Video queries see video keys within `frame_receptive_field` frames; audio/text keys and queries see all."""
    return (q_frame < 0) | (k_frame < 0) | ((q_frame - k_frame).abs() <= frame_receptive_field)


@dataclass
class AttentionMasks:
    """Masks shared by all layers of one forward: `full` for global layers, `local` for frame-local ones.

    Each is None (attend to everything), a bool tensor broadcastable to [B, H, S, S] (True = attend),
    or a FlexAttention BlockMask.
    """

    full: torch.Tensor | None
    local: object | None


# Masks depend only on the layout, so they are built once per shape and shared by every denoising
# step (and by CFG's two halves); a few entries cover a replica alternating between shapes.
@functools.lru_cache(maxsize=8)
def build_attention_masks(
    layout: TokenLayout, frame_receptive_field: int, device: torch.device, backend: LocalAttentionBackend
) -> AttentionMasks:
    # Ordinary tensors even when first built under inference_mode: the cache outlives that context.
    with torch.inference_mode(False), torch.no_grad():
        return _build_attention_masks(layout, frame_receptive_field, device, backend)


def _build_attention_masks(
    layout: TokenLayout, frame_receptive_field: int, device: torch.device, backend: LocalAttentionBackend
) -> AttentionMasks:
    valid = torch.arange(layout.seq_len, device=device)[None, :] < layout.valid_lens(device)[:, None]  # [B, S]
    # No mask at all when nothing is padded, so SDPA can pick its flash / memory-efficient kernels.
    full = valid[:, None, None, :] if layout.has_text_padding else None
    if frame_receptive_field < 0 or frame_receptive_field >= layout.num_frames - 1:
        return AttentionMasks(full=full, local=full)  # the field covers every frame: frame-local is global
    frames = layout.token_frames(device)
    if backend == "auto":
        backend = "flex" if device.type == "cuda" else "dense"
    if backend == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        valid_lens = layout.valid_lens(device)
        field = torch.tensor(frame_receptive_field, device=device)  # a tensor, so no recompile per field

        def mask_mod(b, h, q_idx, kv_idx):
            local = frame_local_allowed(frames[q_idx], frames[kv_idx], field)
            return local & (kv_idx < valid_lens[b])

        local = create_block_mask(
            mask_mod, layout.batch_size, None, layout.seq_len, layout.seq_len, device=str(device)
        )
        # Tensors inside a BlockMask start out static to dynamo; their batch and block-count dims
        # vary with the shape, so mark them dynamic up front rather than after a recompile.
        for tensor in local.as_tuple()[2:]:
            if isinstance(tensor, torch.Tensor):
                for dim in (0, *range(2, tensor.dim())):
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
    elif backend == "dense":
        local = frame_local_allowed(frames[:, None], frames[None, :], frame_receptive_field)
        local = local[None, None] & valid[:, None, None, :]
    else:
        raise ValueError(f"local_attention_backend={backend!r} must be 'auto', 'dense' or 'flex'")
    return AttentionMasks(full=full, local=local)


@functools.cache
def compiled_flex_attention():
    """FlexAttention compiled once with dynamic shapes: a long-lived replica meets many sequence
    lengths (prompt length, duration, aspect), and a shape-specialized compile would recompile for
    each until dynamo's recompile limit, then fall back to eager flex, which materializes the scores."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: object | None) -> torch.Tensor:
    """Softmax attention with GQA; q [B, Hq, S, D], k/v [B, Hkv, S, D] -> [B, Hq, S, D]."""
    gqa = q.shape[1] != k.shape[1]
    if mask is None or isinstance(mask, torch.Tensor):
        if gqa and q.is_cuda:  # expanded kv keeps SDPA on its fused CUDA kernels
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            gqa = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    # Compiled on every device: eager FlexAttention materializes the full score matrix.
    return compiled_flex_attention()(q, k, v, block_mask=mask, enable_gqa=gqa)


# --------------------------------------------------------------------------------------------
# Coordinates and Fourier RoPE
# --------------------------------------------------------------------------------------------


def grid_coords(size: Sequence[int], ref_size: Sequence[int], t_offset: int = 0) -> torch.Tensor:
    """(t, h, w, T, H, W, ref_T, ref_H, ref_W) for every cell of a T x H x W grid, [T*H*W, 9]."""
    t, h, w = torch.meshgrid(
        torch.arange(size[0], dtype=torch.float32) + t_offset,
        torch.arange(size[1], dtype=torch.float32),
        torch.arange(size[2], dtype=torch.float32),
        indexing="ij",
    )
    xyz = torch.stack([t, h, w], dim=-1).reshape(-1, 3)
    meta = torch.tensor([*size, *ref_size], dtype=torch.float32).expand(xyz.shape[0], 6)
    return torch.cat([xyz, meta], dim=-1)


def sample_coords(layout: TokenLayout, height: int, width: int, text_len: int, coords_style: CoordsStyle) -> torch.Tensor:
    """Coordinates of one sample's video | audio | text tokens, text padded to the layout, [S, 9].

    `v2` (base models): audio is scaled onto the video frame axis, text sits at negative times
    with no positional signal. `v1` (super-resolution): audio is stretched to the latent frame
    count, text to a reference length of 2.
    """
    video = grid_coords((layout.num_frames, height, width), (layout.num_frames, height, width))
    if coords_style == "v2":
        audio = grid_coords((layout.num_audio, 1, 1), ((layout.num_audio - 1) // 4 + 1, 1, 1))
        text = grid_coords((text_len, 1, 1), (1, 1, 1), t_offset=-text_len)
    elif coords_style == "v1":
        audio = grid_coords((layout.num_audio, 1, 1), (layout.num_frames, 1, 1))
        text = grid_coords((text_len, 1, 1), (2, 1, 1))
    else:
        raise ValueError(f"coords_style={coords_style!r} must be 'v1' or 'v2'")
    padding = text[-1:].expand(layout.num_text - text_len, 9)  # masked out of attention; any finite value
    return torch.cat([video, audio, text, padding], dim=0)


class FourierRoPE(nn.Module):
    """Rotary angles from per-axis Fourier features of (t, h, w): head_dim // 8 bands per axis,
    rotating the first 3/4 of every head (pairs i and i + 3 * bands)."""

    def __init__(self, head_dim: int, temperature: float = 10000.0):
        super().__init__()
        self.num_bands = head_dim // 8
        self.temperature = temperature
        self.register_buffer("bands", self.default_bands())

    def default_bands(self, device: torch.device | None = None) -> torch.Tensor:
        exponent = torch.arange(self.num_bands, dtype=torch.float32, device=device) / self.num_bands
        return 1.0 / torch.pow(self.temperature, exponent)

    def reset_bands(self) -> None:
        """Recompute the bands (checkpoints may omit them; meta-device construction leaves them empty)."""
        self.bands = self.default_bands(self.bands.device)

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coords [..., 9] -> (cos, sin), each [..., 3 * bands]."""
        xyz, size, ref = coords[..., 0:3], coords[..., 3:6], coords[..., 6:9]
        scale = (ref - 1) / (size - 1)
        scale = torch.where((ref == 1) & (size == 1), torch.ones_like(scale), scale)
        if not torch.isfinite(scale).all():
            raise ValueError("RoPE coordinates have a size-1 axis with a reference size > 1 (e.g. v1 coords of a 1-token text)")
        center = (size - 1) / 2
        center[..., 0] = 0  # time is not centered
        angles = ((xyz - center) * scale).unsqueeze(-1) * self.bands  # [..., 3, bands]
        return angles.cos().flatten(-2), angles.sin().flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, S, H, D] by angles [B, S, 1, R]: pairs (i, R + i) for i < R; dims >= 2R pass through."""
    r = cos.shape[-1]
    x1, x2, rest = x[..., :r], x[..., r : 2 * r], x[..., 2 * r :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class ModalityRMSNorm(nn.Module):
    """RMSNorm with a (1 + weight) scale, one weight per modality ([num_modalities * dim]); fp32 math."""

    def __init__(self, dim: int, num_modalities: int = 1, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.num_modalities = num_modalities
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim * num_modalities, dtype=torch.float32))

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        """x [B, S, ..., dim]; the modality of a token is its segment along dim 1."""
        t = x.float()
        t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.num_modalities == 1:
            t = t * (self.weight + 1)
        else:
            per_token = torch.cat(
                [(w + 1).expand(n, self.dim) for w, n in zip(self.weight.chunk(self.num_modalities), layout.segments)]
            )
            t = t * per_token.view(per_token.shape[0], *([1] * (t.dim() - 3)), self.dim)
        return t.to(x.dtype)


class ModalityLinear(nn.Module):
    """Bias-free linear run in `compute_dtype`, one weight per modality fused along the output dim
    ([num_modalities * out_features, in_features], in the order video, audio, text, as the token
    segments). A tensor-parallel shard holds fewer rows per modality."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_modalities: int = 1,
        compute_dtype: torch.dtype = torch.bfloat16,
        param_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.num_modalities = num_modalities
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(torch.empty(out_features * num_modalities, in_features, dtype=param_dtype))

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        if self.num_modalities == 1:
            return F.linear(x, self.weight.to(self.compute_dtype))
        parts = x.split(layout.segments, dim=1)
        weights = self.weight.chunk(self.num_modalities, dim=0)
        return torch.cat([F.linear(p, w.to(self.compute_dtype)) for p, w in zip(parts, weights)], dim=1)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, modalities={self.num_modalities}, compute={self.compute_dtype}"


def swiglu7(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """Clamped SwiGLU on interleaved (gate, linear) pairs, with +1 on the linear half (GPT-OSS style)."""
    gate = x[..., ::2].clamp(max=limit)
    linear = x[..., 1::2].clamp(-limit, limit)
    return gate * torch.sigmoid(alpha * gate) * (linear + 1)


def gelu7(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """Clamped sigmoid-GELU, the non-gated MLP activation of the first layers."""
    x = x.clamp(max=limit)
    return x * torch.sigmoid(alpha * x)


class Attention(nn.Module):
    """Pre-norm GQA self-attention with a fused [q | k | v | gate] projection, per-head q/k RMSNorm,
    RoPE and a per-head sigmoid gate on the output."""

    def __init__(self, arch: ArchConfig, layer_idx: int, compute_dtype: torch.dtype):
        super().__init__()
        m = arch.num_modalities(layer_idx)
        self.head_dim = arch.head_dim
        # Heads held by this module; a tensor-parallel shard divides both by its world size.
        self.num_heads_q = arch.num_heads_q
        self.num_heads_kv = arch.num_heads_kv
        self.gated = arch.enable_attn_gating
        self.use_local_attn = layer_idx in arch.local_attn_layers
        self.compute_dtype = compute_dtype
        qkv_out = (self.num_heads_q + 2 * self.num_heads_kv) * self.head_dim + (self.num_heads_q if self.gated else 0)
        self.pre_norm = ModalityRMSNorm(arch.hidden_size, m)
        self.linear_qkv = ModalityLinear(arch.hidden_size, qkv_out, m, compute_dtype)
        self.linear_proj = ModalityLinear(self.num_heads_q * self.head_dim, arch.hidden_size, m, compute_dtype)
        self.q_norm = ModalityRMSNorm(self.head_dim, m)
        self.k_norm = ModalityRMSNorm(self.head_dim, m)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], layout: TokenLayout, masks: AttentionMasks
    ) -> torch.Tensor:
        b, s, _ = x.shape
        hq, hkv, d = self.num_heads_q, self.num_heads_kv, self.head_dim
        qkv = self.linear_qkv(self.pre_norm(x, layout), layout).float()
        q, k, v, gate = qkv.split([hq * d, hkv * d, hkv * d, hq if self.gated else 0], dim=-1)
        q = self.q_norm(q.view(b, s, hq, d), layout)
        k = self.k_norm(k.view(b, s, hkv, d), layout)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attend(
            *(t.to(self.compute_dtype).transpose(1, 2) for t in (q, k, v.view(b, s, hkv, d))),
            masks.local if self.use_local_attn else masks.full,
        ).transpose(1, 2)
        if self.gated:
            out = out * torch.sigmoid(gate).unsqueeze(-1)
        return self.linear_proj(out.reshape(b, s, hq * d), layout)


class MLP(nn.Module):
    """Pre-norm MLP: swiglu7 (up projection holds interleaved gate/linear rows) or gelu7."""

    def __init__(self, arch: ArchConfig, layer_idx: int, compute_dtype: torch.dtype):
        super().__init__()
        m = arch.num_modalities(layer_idx)
        gated = layer_idx not in arch.gelu7_layers
        intermediate = arch.mlp_intermediate_size(layer_idx)
        self.activation = swiglu7 if gated else gelu7
        self.compute_dtype = compute_dtype
        self.pre_norm = ModalityRMSNorm(arch.hidden_size, m)
        self.up_gate_proj = ModalityLinear(arch.hidden_size, intermediate * (2 if gated else 1), m, compute_dtype)
        self.down_proj = ModalityLinear(intermediate, arch.hidden_size, m, compute_dtype)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        h = self.up_gate_proj(self.pre_norm(x, layout), layout).float()
        return self.down_proj(self.activation(h), layout).float()


class TransformerLayer(nn.Module):
    def __init__(self, arch: ArchConfig, layer_idx: int, compute_dtype: torch.dtype):
        super().__init__()
        m = arch.num_modalities(layer_idx)
        self.attention = Attention(arch, layer_idx, compute_dtype)
        self.mlp = MLP(arch, layer_idx, compute_dtype)
        self.post_norm = layer_idx in arch.post_norm_layers
        if self.post_norm:
            self.attn_post_norm = ModalityRMSNorm(arch.hidden_size, m)
            self.mlp_post_norm = ModalityRMSNorm(arch.hidden_size, m)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], layout: TokenLayout, masks: AttentionMasks
    ) -> torch.Tensor:
        attn = self.attention(x, rope, layout, masks)
        if self.post_norm:
            attn = self.attn_post_norm(attn, layout)
        x = x + attn
        mlp = self.mlp(x, layout)
        if self.post_norm:
            mlp = self.mlp_post_norm(mlp, layout)
        return x + mlp


class TransformerBlock(nn.Module):
    def __init__(self, arch: ArchConfig, compute_dtype: torch.dtype):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(arch, i, compute_dtype) for i in range(arch.num_layers))

    def forward(self, x, rope, layout, masks):
        for layer in self.layers:
            x = layer(x, rope, layout, masks)
        return x


class Adapter(nn.Module):
    """Per-modality input projections (fp32) and the RoPE over token coordinates."""

    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.video_embedder = nn.Linear(arch.video_in_channels, arch.hidden_size)
        self.text_embedder = nn.Linear(arch.text_in_channels, arch.hidden_size)
        self.audio_embedder = nn.Linear(arch.audio_in_channels, arch.hidden_size)
        self.rope = FourierRoPE(arch.head_dim)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.video_embedder(video), self.audio_embedder(audio), self.text_embedder(text)], dim=1)


# --------------------------------------------------------------------------------------------
# Patching and the model
# --------------------------------------------------------------------------------------------


def patchify(latent_video: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T * H/2 * W/2, C * 4]; token channels ordered (c, ph, pw) as the reference's unfold."""
    b, c, t, h, w = latent_video.shape
    x = latent_video.reshape(b, c, t, h // 2, 2, w // 2, 2)
    return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t * (h // 2) * (w // 2), c * 4)


def unpatchify(tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """[B, T * H/2 * W/2, 4 * C] -> [B, C, T, H, W]; output channels ordered (ph, pw, c) as the reference's depack."""
    b, _, ch = tokens.shape
    x = tokens.reshape(b, frames, height // 2, width // 2, 2, 2, ch // 4)
    return x.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, ch // 4, frames, height, width)


class MagiHumanDiT(nn.Module):
    """The joint audio-video DiT. Parameter names and fused layouts match the released checkpoints."""

    def __init__(
        self,
        arch: ArchConfig,
        compute_dtype: torch.dtype = torch.bfloat16,
        local_attention_backend: LocalAttentionBackend = "auto",
    ):
        super().__init__()
        self.arch = arch
        self.compute_dtype = compute_dtype
        self.local_attention_backend = local_attention_backend
        self.adapter = Adapter(arch)
        self.block = TransformerBlock(arch, compute_dtype)
        self.final_norm_video = ModalityRMSNorm(arch.hidden_size)
        self.final_norm_audio = ModalityRMSNorm(arch.hidden_size)
        self.final_linear_video = nn.Linear(arch.hidden_size, arch.video_in_channels, bias=False)
        self.final_linear_audio = nn.Linear(arch.hidden_size, arch.audio_in_channels, bias=False)

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Random weights for runs without a checkpoint (tiny preset, benchmarks): N(0, 0.02) matrices,
        zero biases, unit norm scales."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                p.zero_()
        self.adapter.rope.reset_bands()

    @property
    def device(self) -> torch.device:
        return self.final_linear_video.weight.device

    def forward(
        self,
        video_tokens: torch.Tensor,
        audio_tokens: torch.Tensor,
        text_tokens: torch.Tensor,
        layout: TokenLayout,
        coords: torch.Tensor,
        frame_receptive_field: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed tokens [B, Nv, Cv], [B, Na, Ca], [B, Lmax, Ct] and coordinates [B, S, 9]
        -> output tokens [B, Nv, Cv], [B, Na, Ca]."""
        masks = build_attention_masks(layout, frame_receptive_field, video_tokens.device, self.local_attention_backend)
        cos, sin = self.adapter.rope(coords)
        rope = (cos.unsqueeze(2), sin.unsqueeze(2))
        x = self.adapter(video_tokens, audio_tokens, text_tokens)
        x = self.block(x, rope, layout, masks)
        nv, na, _ = layout.segments
        video = self.final_linear_video(self.final_norm_video(x[:, :nv].float()))
        audio = self.final_linear_audio(self.final_norm_audio(x[:, nv : nv + na].float()))
        return video, audio

    @torch.no_grad()
    def velocity(
        self,
        latent_video: torch.Tensor,
        latent_audio: torch.Tensor,
        text: torch.Tensor,
        text_lens: Sequence[int],
        coords_style: CoordsStyle | None = None,
        frame_receptive_field: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow velocity for noisy latents.

        latent_video [B, C, T, H, W], latent_audio [B, N, Ca], text [B, L, Ct] padded, text_lens the
        real length of each prompt. coords_style / frame_receptive_field default to the arch's.
        Returns fp32 tensors shaped like the latents.
        """
        arch = self.arch
        coords_style = arch.coords_style if coords_style is None else coords_style
        frame_receptive_field = arch.frame_receptive_field if frame_receptive_field is None else frame_receptive_field
        text_lens = tuple(int(n) for n in text_lens)
        self._check_inputs(latent_video, latent_audio, text, text_lens)
        b, _, t, h, w = latent_video.shape
        layout = TokenLayout(
            num_frames=t, tokens_per_frame=(h // 2) * (w // 2), num_audio=latent_audio.shape[1], text_lens=text_lens
        )
        coords = torch.stack(
            [sample_coords(layout, h // 2, w // 2, n, coords_style) for n in text_lens]
        ).to(self.device)
        video, audio = self.forward(
            patchify(latent_video.float()),
            latent_audio.float(),
            text[:, : layout.num_text].float(),
            layout,
            coords,
            frame_receptive_field,
        )
        return unpatchify(video, t, h, w), audio

    def _check_inputs(self, latent_video, latent_audio, text, text_lens) -> None:
        arch = self.arch
        if latent_video.dim() != 5 or latent_video.shape[1] != arch.latent_channels:
            raise ValueError(f"latent_video must be [B, {arch.latent_channels}, T, H, W], got {list(latent_video.shape)}")
        b, _, _, h, w = latent_video.shape
        if h % 2 or w % 2:
            raise ValueError(f"latent_video H and W must be even (2x2 patches), got H={h}, W={w}")
        if latent_audio.dim() != 3 or latent_audio.shape[0] != b or latent_audio.shape[2] != arch.audio_in_channels:
            raise ValueError(f"latent_audio must be [{b}, N, {arch.audio_in_channels}], got {list(latent_audio.shape)}")
        if latent_audio.shape[1] < 1:
            raise ValueError("latent_audio must hold at least one audio latent")
        if text.dim() != 3 or text.shape[0] != b or text.shape[2] != arch.text_in_channels:
            raise ValueError(f"text must be [{b}, L, {arch.text_in_channels}], got {list(text.shape)}")
        if len(text_lens) != b or not all(1 <= n <= text.shape[1] for n in text_lens):
            raise ValueError(f"text_lens must give 1..{text.shape[1]} real tokens for each of {b} samples, got {list(text_lens)}")
