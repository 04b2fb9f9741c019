import pytest

from model.magihuman.sizes import (
    AUDIO_VIRTUAL_RATE,
    BASE_SIZES,
    FINAL_SIZES,
    SR_SIZES,
    clip_geometry,
    frame_count,
)
from schemas.formats import ASPECT_RATIOS, GENERATION_SIZES, RESOLUTIONS, aspect_fraction, delivery_size


@pytest.mark.parametrize("seconds", range(2, 16))
def test_sequence_layout_is_the_references(seconds):
    # inference/pipeline/video_generate.py: num_frames = seconds * fps + 1 audio latents,
    # latent_length = (num_frames - 1) // 4 + 1 video latent frames.
    g = clip_geometry(seconds, "16:9")
    num_frames = seconds * 25 + 1
    assert g.audio_latents == num_frames
    assert g.latent_frames == (num_frames - 1) // 4 + 1
    assert g.decoded_frames == 4 * (g.latent_frames - 1) + 1
    assert g.frames == seconds * 25  # delivered: exactly the requested duration
    expected_fit = {0: "dropped_1", 1: "exact", 2: "held_1", 3: "held_2"}[seconds % 4]
    assert g.frame_fit == expected_fit
    assert g.decoded_frames - g.frames == {"dropped_1": 1, "exact": 0, "held_1": -1, "held_2": -2}[g.frame_fit]


def test_five_second_clip_is_32_latent_frames_and_126_audio_latents():
    g = clip_geometry(5, "9:16")
    assert (g.frames, g.latent_frames, g.decoded_frames, g.audio_latents) == (125, 32, 125, 126)
    assert g.frame_fit == "exact"


def test_four_second_clip_drops_one_decoded_frame():
    g = clip_geometry(4, "16:9")
    assert (g.frames, g.latent_frames, g.decoded_frames, g.audio_latents) == (100, 26, 101, 101)
    assert g.frame_fit == "dropped_1"


@pytest.mark.parametrize("aspect", ASPECT_RATIOS)
@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_sizes_fit_the_patch_grid_and_the_aspect(aspect, resolution):
    g = clip_geometry(2, aspect, resolution)
    for w, h in filter(None, [g.base_size, g.sr_size]):
        assert w % 32 == 0 and h % 32 == 0
    lh, lw = g.base_latent_hw
    assert lh % 2 == 0 and lw % 2 == 0
    assert g.final_size == FINAL_SIZES[resolution][aspect]
    expected = float(aspect_fraction(aspect))
    for w, h in filter(None, [g.base_size, g.sr_size, g.final_size]):
        assert abs(w / h / expected - 1) < 0.025, (w, h)
    assert (g.sr_size is None) == (resolution == "256p")
    assert g.decode_size == (g.sr_size or g.base_size)


def test_delivery_sizes():
    assert FINAL_SIZES["540p"]["16:9"] == (960, 540)
    assert FINAL_SIZES["540p"]["9:16"] == (540, 960)
    assert FINAL_SIZES["1080p"]["16:9"] == (1920, 1080)
    assert FINAL_SIZES["1080p"]["9:16"] == (1080, 1920)
    assert BASE_SIZES["16:9"] == (448, 256)
    # what the base model generates at, for the three original aspects (unchanged by the new formats)
    assert {a: BASE_SIZES[a] for a in ("16:9", "9:16", "1:1")} == {"16:9": (448, 256), "9:16": (256, 448),
                                                                   "1:1": (352, 352)}
    assert SR_SIZES["1080p"]["16:9"] == (1920, 1088)
    # 1:1 keeps about the pixel budget of 16:9 at the same resolution class
    assert abs(BASE_SIZES["1:1"][0] ** 2 / (448 * 256) - 1) < 0.1


def test_audio_aligns_with_video():
    assert AUDIO_VIRTUAL_RATE == 51200  # 2048 samples per latent x 25 latents per second
    g = clip_geometry(5, "1:1")
    assert g.audio_samples(44100) == 5 * 44100
    assert g.audio_samples(48000) == 5 * 48000


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="aspect_ratio"):
        clip_geometry(5, "2:1")
    with pytest.raises(ValueError, match="resolution"):
        clip_geometry(5, "16:9", "480p")
    with pytest.raises(ValueError, match="aspect_ratio"):
        delivery_size("720p", "2:1")
    with pytest.raises(ValueError, match="duration_s"):
        frame_count(0.01)
    with pytest.raises(ValueError, match="multiple of 32"):
        clip_geometry(5, "16:9", base_sizes={"16:9": (450, 256)})


def test_the_sizes_paddock_always_used_are_kept():
    # Changing these would change every clip of the three original ratios.
    original = ("16:9", "9:16", "1:1")
    assert {a: BASE_SIZES[a] for a in original} == {"16:9": (448, 256), "9:16": (256, 448), "1:1": (352, 352)}
    assert {a: SR_SIZES["540p"][a] for a in original} == {"16:9": (896, 512), "9:16": (512, 896), "1:1": (704, 704)}
    assert {a: SR_SIZES["1080p"][a] for a in original} == {
        "16:9": (1920, 1088), "9:16": (1088, 1920), "1:1": (1088, 1088)}


@pytest.mark.parametrize("resolution, aspect, size", [
    ("720p", "4:5", (720, 900)), ("1080p", "21:9", (2520, 1080)), ("540p", "16:9", (960, 540)),
    ("720p", "16:9", (1280, 720)), ("1080p", "9:16", (1080, 1920)), ("540p", "1:1", (540, 540)),
    ("540p", "4:5", (540, 676)), ("1080p", "5:4", (1350, 1080)), ("720p", "9:21", (720, 1680)),
    ("256p", "16:9", (448, 256)), ("256p", "21:9", (512, 224)),
])
def test_delivery_size_short_side_is_the_resolution(resolution, aspect, size):
    assert FINAL_SIZES[resolution][aspect] == delivery_size(resolution, aspect) == size


@pytest.mark.parametrize("aspect", ASPECT_RATIOS)
def test_generation_sizes_follow_the_rules_in_formats(aspect):
    sizes = GENERATION_SIZES[aspect]
    assert set(sizes) == {"base", "540p", "720p", "1080p"}
    assert BASE_SIZES[aspect] == sizes["base"]
    # Near the released model's pixel budget at each stage (16:9's grid there), never far over it.
    for stage, (w, h) in sizes.items():
        budget = GENERATION_SIZES["16:9"][stage][0] * GENERATION_SIZES["16:9"][stage][1]
        assert w * h <= 1.1 * budget, (stage, w, h)
    base_w, base_h = sizes["base"]
    assert 0.85 <= base_w * base_h / (448 * 256) <= 1.1
    assert SR_SIZES["540p"][aspect] == (2 * base_w, 2 * base_h)  # twice the base latent grid
    for resolution in ("720p", "1080p"):
        (w, h), (fw, fh) = SR_SIZES[resolution][aspect], FINAL_SIZES[resolution][aspect]
        covers = (w, h) == (-(-fw // 32) * 32, -(-fh // 32) * 32)
        # Only the ratios whose delivery would blow the budget are generated smaller and scaled up.
        assert covers or aspect in ("21:9", "9:21"), (resolution, w, h)
