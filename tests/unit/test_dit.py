"""The DiT against the reference test vector, batching, frame-local attention and input checks."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.magihuman import PRESETS, ArchConfig, MagiHumanDiT, load_dit
from model.magihuman import dit as dit_module
from model.magihuman.dit import TokenLayout, apply_rope, build_attention_masks

DATA = Path(__file__).resolve().parents[1] / "data" / "magihuman-tiny"
# The README of the test vector: an honest fp32 or bf16 port lands below this relative L2 error.
BOUND = 0.025


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module")
def vector():
    return load_file(str(DATA / "base.io.safetensors"))


@pytest.fixture(scope="module")
def reference_arch() -> ArchConfig:
    return ArchConfig.from_json(DATA / "base.json")


def reference_model(arch: ArchConfig, compute_dtype=torch.bfloat16) -> MagiHumanDiT:
    model = MagiHumanDiT(arch, compute_dtype=compute_dtype)
    model.load_state_dict(load_file(str(DATA / "base.weights.safetensors")), strict=True)
    return model.eval()


def test_test_vector_arch_is_the_tiny_preset(reference_arch):
    assert reference_arch == PRESETS["tiny"]
    assert (reference_arch.num_heads_q, reference_arch.num_heads_kv) == (4, 2)


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float32])
def test_velocity_matches_reference_vector(vector, reference_arch, compute_dtype):
    model = reference_model(reference_arch, compute_dtype)
    v_video, v_audio = model.velocity(vector["latent_video"], vector["latent_audio"], vector["txt_feat"], [17])
    assert v_video.shape == vector["v_video"].shape and v_audio.shape == vector["v_audio"].shape
    assert rel_err(v_video, vector["v_video"]) < BOUND
    assert rel_err(v_audio, vector["v_audio"]) < BOUND


def test_velocity_matches_reference_vector_closely_with_fp32_accurate_attention(vector, reference_arch):
    # PyTorch's CPU flash kernel rounds bf16 attention probabilities; with the math kernel (fp32
    # inside, bf16 in and out) the port sits at about 0.009, the reference's own bf16-vs-fp32 spread.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = reference_model(reference_arch)
    with sdpa_kernel(SDPBackend.MATH):
        v_video, v_audio = model.velocity(vector["latent_video"], vector["latent_audio"], vector["txt_feat"], [17])
    assert rel_err(v_video, vector["v_video"]) < BOUND / 2
    assert rel_err(v_audio, vector["v_audio"]) < BOUND / 2


def test_reference_vector_rejects_wrong_coords_and_leaked_padding(vector, reference_arch):
    # The bound is tight enough to catch the mistakes the README lists.
    model = reference_model(reference_arch)
    inputs = (vector["latent_video"], vector["latent_audio"], vector["txt_feat"])
    v1_video, _ = model.velocity(*inputs, [17], coords_style="v1")
    leaked_video, _ = model.velocity(*inputs, [24])
    assert rel_err(v1_video, vector["v_video"]) > BOUND
    assert rel_err(leaked_video, vector["v_video"]) > BOUND


def random_inputs(batch: int, frames=3, height=4, width=6, audio=9, text=12, channels=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 48, frames, height, width, generator=g),
        torch.randn(batch, audio, 64, generator=g),
        torch.randn(batch, text, channels, generator=g),
    )


LOCAL_ARCH = PRESETS["tiny"].replace(local_attn_layers=(0, 2, 3, 5), coords_style="v1", frame_receptive_field=1)


@pytest.mark.parametrize("arch", [PRESETS["tiny"], LOCAL_ARCH], ids=["full", "frame-local"])
@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_batch_equals_one_by_one(arch, compute_dtype):
    model = load_dit(None, arch=arch, seed=3, compute_dtype=compute_dtype)
    video, audio, text = random_inputs(3, frames=4)
    lens = [12, 5, 9]
    batch_video, batch_audio = model.velocity(video, audio, text, lens)
    for i in range(3):
        one_video, one_audio = model.velocity(video[i : i + 1], audio[i : i + 1], text[i : i + 1], [lens[i]])
        if compute_dtype == torch.float32:
            torch.testing.assert_close(batch_video[i], one_video[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(batch_audio[i], one_audio[0], rtol=1e-5, atol=1e-5)
        else:  # bf16 GEMM kernels round differently for different batch shapes
            assert rel_err(batch_video[i], one_video[0]) < 5e-3
            assert rel_err(batch_audio[i], one_audio[0]) < 5e-3


def test_text_padding_has_no_influence():
    model = load_dit(None, arch="tiny", seed=4)
    video, audio, text = random_inputs(1)
    garbage = text.clone()
    garbage[:, 7:] = 100.0
    out = model.velocity(video, audio, text, [7])
    out_garbage = model.velocity(video, audio, garbage, [7])
    torch.testing.assert_close(out, out_garbage, rtol=0, atol=0)


def test_frame_local_attention_limits_what_video_tokens_see():
    # One frame-local layer with a receptive field of 0: a video token's output depends on its own
    # frame's video tokens and on audio/text, never on other frames.
    arch = ArchConfig(
        num_layers=1, hidden_size=64, head_dim=16, num_query_groups=2, text_in_channels=32,
        mm_layers=(0,), gelu7_layers=(), local_attn_layers=(0,),
    )
    model = load_dit(None, arch=arch, seed=5)
    video, audio, text = random_inputs(1, frames=4, text=5, channels=32)
    changed = video.clone()
    changed[:, :, 3] += 1.0
    base_out = model.velocity(video, audio, text, [5], frame_receptive_field=0)[0]
    changed_out = model.velocity(changed, audio, text, [5], frame_receptive_field=0)[0]
    torch.testing.assert_close(base_out[:, :, :3], changed_out[:, :, :3], rtol=0, atol=0)
    assert not torch.allclose(base_out[:, :, 3], changed_out[:, :, 3])
    # Full attention (-1) lets the change reach every frame.
    full_out = model.velocity(changed, audio, text, [5], frame_receptive_field=-1)[0]
    assert not torch.allclose(base_out[:, :, 0], full_out[:, :, 0])


@pytest.mark.slow  # compiles FlexAttention for the CPU
def test_frame_local_wide_field_equals_full_attention_and_flex_equals_dense():
    model = load_dit(None, arch=LOCAL_ARCH, seed=6)
    video, audio, text = random_inputs(2, frames=4)
    lens = [12, 6]
    full = model.velocity(video, audio, text, lens, frame_receptive_field=-1)
    wide = model.velocity(video, audio, text, lens, frame_receptive_field=4)
    torch.testing.assert_close(wide, full, rtol=1e-5, atol=1e-5)
    dense = model.velocity(video, audio, text, lens, frame_receptive_field=1)
    model.local_attention_backend = "flex"
    flex = model.velocity(video, audio, text, lens, frame_receptive_field=1)
    torch.testing.assert_close(flex, dense, rtol=2e-2, atol=2e-2)  # bf16 attention, different kernels
    assert not torch.allclose(dense[0], full[0], atol=1e-3)


def test_rope_rotates_three_quarters_of_each_head_and_keeps_norms():
    x = torch.randn(1, 5, 2, 32)
    angles = torch.randn(1, 5, 1, 12)
    out = apply_rope(x, angles.cos(), angles.sin())
    torch.testing.assert_close(out[..., 24:], x[..., 24:])
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    identity = apply_rope(x, torch.ones(1, 5, 1, 12), torch.zeros(1, 5, 1, 12))
    torch.testing.assert_close(identity, x)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v, a, t: (v[:, :, :, :3], a, t), "H and W must be even"),
        (lambda v, a, t: (v[:, :40], a, t), "latent_video must be"),
        (lambda v, a, t: (v, a[..., :32], t), "latent_audio must be"),
        (lambda v, a, t: (v, a, t[..., :50]), "text must be"),
    ],
)
def test_bad_inputs_name_the_argument(change, message):
    model = load_dit(None, arch="tiny")
    with pytest.raises(ValueError, match=message):
        model.velocity(*change(*random_inputs(1)), [4])
    with pytest.raises(ValueError, match="text_lens"):
        model.velocity(*random_inputs(1), [13])


def test_arch_config_reads_reference_fields_and_rejects_unknown_ones():
    arch = ArchConfig.from_dict({"arch_config": {"num_layers": 40, "num_heads_q": 40, "params_dtype": "torch.float32"}})
    assert arch == PRESETS["magihuman-base"]
    assert arch.mlp_intermediate_size(10) == 13652 and arch.mlp_intermediate_size(0) == 20480
    with pytest.raises(ValueError, match="num_heads_q=32 contradicts"):
        ArchConfig.from_dict({"num_heads_q": 32})
    with pytest.raises(ValueError, match="unknown architecture fields.*hiden_size"):
        ArchConfig.from_dict({"hiden_size": 64})
    sr = PRESETS["magihuman-sr-1080p"]
    assert (sr.coords_style, sr.frame_receptive_field) == ("v1", 11)
    assert set(range(40)) - set(sr.local_attn_layers) == {3, 7, 11, 15, 19, 23, 27, 31}


# --- a GPU path for long-lived replicas: masks built once per shape, one compile for all shapes --


MIXED_SHAPES = [  # (text lens of the batch, frames, latent H, latent W): 137..405 tokens, 2..4 mask blocks
    ([12], 5, 8, 12),
    ([20, 7], 6, 8, 8),
    ([9], 7, 8, 16),
    ([15], 5, 12, 8),
    ([30, 8, 3], 7, 8, 12),
    ([12], 11, 8, 16),
]


def _velocity(model, lens, frames, height, width, seed=0, frame_receptive_field=1):
    video, audio, text = random_inputs(len(lens), frames, height, width, audio=4 * (frames - 1) + 1, text=max(lens), seed=seed)
    return model.velocity(video, audio, text, lens, frame_receptive_field=frame_receptive_field)


def test_attention_masks_are_built_once_per_shape():
    model = load_dit(None, arch=LOCAL_ARCH, seed=7)
    model.local_attention_backend = "dense"
    build_attention_masks.cache_clear()
    for lens, frames, h, w in MIXED_SHAPES[:2] * 2:  # each shape twice, interleaved
        _velocity(model, lens, frames, h, w)
    info = build_attention_masks.cache_info()
    assert (info.misses, info.hits) == (2, 2)


def test_block_masks_are_built_once_per_shape(monkeypatch):
    import torch.nn.attention.flex_attention as flex

    builds = []
    real = flex.create_block_mask
    monkeypatch.setattr(flex, "create_block_mask", lambda *a, **k: builds.append(a[3]) or real(*a, **k))
    build_attention_masks.cache_clear()
    layouts = [TokenLayout(5, 24, 17, (12,)), TokenLayout(6, 16, 21, (20, 7)), TokenLayout(5, 24, 17, (12,))]
    masks = [build_attention_masks(layout, 1, torch.device("cpu"), "flex") for layout in layouts]
    assert builds == [layouts[0].seq_len, layouts[1].seq_len]
    assert masks[2] is masks[0]


def test_unmasked_attention_reaches_sdpa_without_a_mask(monkeypatch):
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append(None if attn_mask is None else tuple(attn_mask.shape))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(dit_module.F, "scaled_dot_product_attention", spy)
    model = load_dit(None, arch=LOCAL_ARCH, seed=8)
    # One prompt, nothing padded, and a receptive field covering the clip: no layer needs a mask.
    _velocity(model, [12], 4, 4, 6, frame_receptive_field=3)
    assert seen == [None] * LOCAL_ARCH.num_layers
    seen.clear()
    # Padded text: a [B, 1, 1, S] key mask, never a materialized [S, S] one, in the global layers.
    lens = [12, 5]
    _velocity(model, lens, 4, 4, 6, frame_receptive_field=-1)
    seq = 4 * 6 + 13 + 12
    assert seen == [(2, 1, 1, seq)] * LOCAL_ARCH.num_layers


@pytest.mark.slow  # compiles FlexAttention for the CPU (about a minute on two cores)
def test_flex_attention_compiles_once_for_mixed_shapes(recwarn):
    from torch._dynamo.utils import counters

    model = load_dit(None, arch=LOCAL_ARCH, seed=9)
    dense = [_velocity(model, *shape, seed=i) for i, shape in enumerate(MIXED_SHAPES)]
    model.local_attention_backend = "flex"
    # Batch 1 and batch > 1 are two graphs (dynamo specializes size-1 dims); nothing else is.
    before = counters["stats"]["unique_graphs"]
    flex = [_velocity(model, *shape, seed=i) for i, shape in enumerate(MIXED_SHAPES[:2])]
    compiled = counters["stats"]["unique_graphs"]
    assert 0 < compiled - before <= 2  # dynamo did compile flex attention on the CPU
    flex += [_velocity(model, *shape, seed=i) for i, shape in enumerate(MIXED_SHAPES[2:], start=2)]
    assert counters["stats"]["unique_graphs"] == compiled  # new lengths, batch sizes, aspects: no recompile
    for got, want in zip(flex, dense):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # bf16 attention, different kernels
    assert not [w for w in recwarn if "without torch.compile" in str(w.message)]  # never the eager fallback
