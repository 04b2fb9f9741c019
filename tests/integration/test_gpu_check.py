"""bench/gpu_check.py runs its tiny CPU variant end to end, so the GPU check never rots."""

import json

import pytest
import torch

from bench.gpu_check import REFERENCE_H100, SIZES, main
from model.magihuman.sizes import clip_geometry
from model.presets import get_preset


@pytest.mark.slow  # about 25 s on one CPU thread
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the check measures the full-size stack")
def test_cpu_variant_runs_and_says_the_gpu_figures_are_not_measured(tmp_path, capsys):
    output = tmp_path / "gpu_check.json"
    result = main(["--seconds", "1", "--text-len", "32", "--repeats", "1", "--output", str(output)])
    printed = capsys.readouterr().out
    assert "GPU figures NOT measured" in printed and "ref H100" in printed
    assert json.loads(output.read_text()) == json.loads(json.dumps(result))
    assert result["gpu_measured"] is False and result["stack"] == "tiny"

    preset = get_preset("tiny")
    sizes = {"256p": preset.base_sizes["16:9"], **{r: preset.sr_sizes[r]["16:9"] for r in ("540p", "1080p")}}
    geometry = clip_geometry(1, "16:9", "256p")
    assert [r["size"] for r in result["dit"]] == list(SIZES)
    for r in result["dit"]:
        width, height = sizes[r["size"]]
        video = geometry.latent_frames * (height // 32) * (width // 32)
        assert r["tokens"] == video + geometry.audio_latents + 32 and r["step_s"] > 0 and r["flops_per_step"] > 0
    assert [(r["decoder"], r["size"]) for r in result["decode"]] == [(d, s) for d in ("turbo", "full") for s in SIZES]
    for r in result["decode"]:
        width, height = sizes[r["size"]]
        assert r["frames"] == [geometry.decoded_frames, height, width, 3] and r["decode_s"] > 0
    clip = result["clip_256p"]
    assert set(clip["phases_s"]) == {"text", "denoise", "video_decode", "audio_decode"}
    assert clip["total_s"] == pytest.approx(sum(clip["phases_s"].values()))
    assert set(result["estimates"]) == set(REFERENCE_H100)
