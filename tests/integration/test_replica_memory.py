"""One text encoder per replica, the decode split across ranks, and the memory each rank holds:
four gloo processes on this CPU run the tiny stack at TP=4 (the world) and TP=2 (ranks {0, 1}).

- per rank: rank 0 alone holds the text encoder; every rank's weight bytes are what
  model/memory.py computes on the meta device for that rank;
- the split decode (TurboVAED windows; the Wan2.2 VAE's tiles, and whole clips below its tiling
  size) gathered on rank 0 equals one rank's decode;
- a TP=2 and a TP=4 clip (text broadcast from rank 0, split decode, audio from the last rank)
  equal the TP=1 clip within the DiT's TP round-off;
- the audio decode runs on one rank (parallel.audio_rank, the last) while every rank decodes its
  share of the video.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.generator import AVGenerator, ClipSpec, GeneratorConfig
from model.magihuman.video_vae import VideoVAE
from model.memory import replica_memory
from model.parallel import TPGroup, audio_rank, split_decode
from model.presets import get_preset

WORLD = 4
CONFIG = GeneratorConfig(model="tiny", sr_resolutions=())
SPECS = [ClipSpec("A presenter smiles.", 2, seed=1), ClipSpec("Rain on a window.", 2, seed=2)]


def decode_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    # 20 latent frames: 3 TurboVAED windows per clip, 2 clips; 8 x 12 latents tile at 64-pixel tiles.
    return torch.randn(2, 48, 20, 4, 6, generator=g), torch.randn(2, 48, 3, 8, 12, generator=g)


def tiled_vae() -> VideoVAE:
    vae = VideoVAE.tiny(get_preset("tiny").tiny.video_vae)
    vae.tile_above_pixels = 0
    vae.vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64,
                          tile_sample_stride_height=48, tile_sample_stride_width=48)
    return vae


def count_calls(component, method: str) -> dict[str, list]:
    """Record each call of the real ``component.method`` (it still runs), by method name."""
    calls, real = [], getattr(component, method)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    setattr(component, method, counted)
    return {method: calls}


def rank_main(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    pair = dist.new_group([0, 1])
    groups = {4: TPGroup(rank, WORLD)}
    if rank < 2:
        groups[2] = TPGroup(rank, 2, pair)
    results = {}
    turbo_latents, vae_latents = decode_inputs()
    whole = tiled_vae()
    whole.tile_above_pixels = 10**9  # below the tiling size: whole clips per rank
    for tp_size, tp in groups.items():
        generator = AVGenerator(CONFIG, tp)
        decodes = count_calls(generator.audio_vae, "decode") | count_calls(generator.video_decoder, "decode_items")
        clips = generator.generate(SPECS)
        results[tp_size] = {
            "decodes": {name: len(calls) for name, calls in decodes.items()},  # the generate call's, per rank
            "weight_bytes": generator.weight_bytes(),
            "frames": [c.frames for c in clips] if rank == 0 else None,
            "audio": [c.audio for c in clips] if rank == 0 else None,
            "turbo": split_decode(generator.video_decoder, turbo_latents, tp),
            "tiles": split_decode(tiled_vae(), vae_latents, tp),
            "whole": split_decode(whole, vae_latents, tp),
        }
        if tp_size == 4:
            dist.barrier()  # the pair's group starts after the world's work is done
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("memory-out")
    mp.spawn(rank_main, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def tp1() -> dict:
    torch.set_num_threads(1)
    generator = AVGenerator(CONFIG)
    clips = generator.generate(SPECS)
    turbo_latents, vae_latents = decode_inputs()
    whole = tiled_vae()
    whole.tile_above_pixels = 10**9
    return {"frames": [c.frames for c in clips], "audio": [c.audio for c in clips],
            "turbo": generator.video_decoder.decode(turbo_latents), "tiles": tiled_vae().decode(vae_latents),
            "whole": whole.decode(vae_latents), "weight_bytes": generator.weight_bytes()}


@pytest.mark.parametrize("tp_size", [2, 4])
def test_rank0_alone_holds_the_text_encoder_and_each_rank_holds_what_memory_accounting_says(rank_results, tp1, tp_size):
    ranks = [r[tp_size]["weight_bytes"] for r in rank_results[:tp_size]]
    assert "text_encoder" in ranks[0] and all("text_encoder" not in r for r in ranks[1:])
    predicted = replica_memory(CONFIG, tp_size)
    for actual, expected in zip(ranks, predicted):
        assert actual == expected.device_bytes
    # The DiT slice shrinks with TP; the encoder's bytes leave every rank but 0.
    assert ranks[1]["dit"] < 0.75 * tp1["weight_bytes"]["dit"]
    assert sum(ranks[1].values()) == sum(tp1["weight_bytes"].values()) - tp1["weight_bytes"]["text_encoder"] \
        - tp1["weight_bytes"]["dit"] + ranks[1]["dit"]


@pytest.mark.parametrize("tp_size", [2, 4])
@pytest.mark.parametrize("decoder", ["turbo", "tiles", "whole"])
def test_split_decode_gathered_on_rank0_equals_the_one_rank_decode(rank_results, tp1, tp_size, decoder):
    assert torch.equal(rank_results[0][tp_size][decoder], tp1[decoder])
    assert all(r[tp_size][decoder] is None for r in rank_results[1:tp_size])


@pytest.mark.parametrize("tp_size", [2, 4])
def test_the_audio_decodes_on_the_last_rank_alone_while_every_rank_decodes_video(rank_results, tp_size):
    decodes = [r[tp_size]["decodes"] for r in rank_results[:tp_size]]
    assert audio_rank(TPGroup(0, tp_size)) == tp_size - 1
    assert [d["decode"] for d in decodes] == [0] * (tp_size - 1) + [1]  # one batch: one audio decode, on one rank
    assert [d["decode_items"] for d in decodes] == [1] * tp_size  # every rank decodes its share of the video


@pytest.mark.parametrize("tp_size", [2, 4])
def test_a_tp_clip_equals_the_tp1_clip(rank_results, tp1, tp_size):
    result = rank_results[0][tp_size]
    for frames, ref in zip(result["frames"], tp1["frames"]):
        assert frames.shape == ref.shape
        # The DiT's TP round-off (~1e-5 relative) moves a pixel by one level at most, and few of them.
        diff = np.abs(frames.astype(np.int16) - ref.astype(np.int16))
        assert diff.max() <= 1 and diff.mean() < 0.01
    for audio, ref in zip(result["audio"], tp1["audio"]):
        assert audio.shape == ref.shape
        assert np.linalg.norm(audio - ref) / np.linalg.norm(ref) < 1e-3
