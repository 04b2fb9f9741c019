"""TurboVAED: the released folder layout, decoded shapes, and the sliding window's stitching."""

import pytest
import torch

from conftest import write_turbo_vae_folder
from model.magihuman.turbo_vae import TurboVAED, TurboVAEDConfig, window_plan
from model.magihuman.video_vae import TINY_LATENTS_MEAN, TINY_LATENTS_STD

# Two temporal and three spatial x2 upsamplers plus the 2x2 unpatchify: stride 4 x 16 x 16.
TINY = TurboVAEDConfig(
    decoder_block_out_channels=(8, 8, 16, 16),
    decoder_layers_per_block=(1, 1, 1, 1, 1),
    first_chunk_size=3,
    step_size=2,
    latents_mean=TINY_LATENTS_MEAN,
    latents_std=TINY_LATENTS_STD,
)


def released_folder(tmp_path, model: TurboVAED, with_decoder_prefix=True):
    folder = write_turbo_vae_folder(tmp_path / "turbo_vae", model)
    if not with_decoder_prefix:  # the reference also accepts a decoder-only state dict
        (ckpt,) = folder.glob("*.ckpt")
        payload = torch.load(ckpt, weights_only=True)
        payload["ema_state_dict"] = {k.replace("module.decoder.", "module."): v for k, v in payload["ema_state_dict"].items()}
        torch.save(payload, ckpt)
    return folder


def test_released_config_defaults_are_the_shipped_decoder():
    cfg = TurboVAEDConfig()
    assert (cfg.first_chunk_size, cfg.step_size, cfg.latent_channels) == (7, 7, 48)
    assert cfg.latents_mean[:2] == (-0.2289, -0.0052) and cfg.latents_std[-1] == 0.7744


@pytest.mark.parametrize("with_decoder_prefix", [True, False])
def test_released_folder_loads_and_decodes_to_the_expected_frames(tmp_path, with_decoder_prefix):
    original = TurboVAED.tiny(TINY, seed=1)
    folder = released_folder(tmp_path, original, with_decoder_prefix)
    loaded = TurboVAED.from_pretrained(folder, dtype=torch.float32)
    assert loaded.config == TINY
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    z = torch.randn(2, 48, 5, 2, 3)
    frames = loaded.decode(z)
    assert frames.shape == (2, 4 * (5 - 1) + 1, 32, 48, 3) and frames.dtype == torch.uint8
    assert frames.float().std() > 0
    assert torch.equal(frames, original.decode(z))
    # A sample decodes the same alone as in a batch.
    assert torch.equal(frames[1:], loaded.decode(z[1:]))


def test_from_pretrained_names_what_is_wrong(tmp_path):
    model = TurboVAED.tiny(TINY)
    folder = released_folder(tmp_path, model)
    (folder / "second.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="exactly one .json config and one .ckpt"):
        TurboVAED.from_pretrained(folder)
    (folder / "second.ckpt").unlink()
    torch.save({"state_dict": {}}, folder / "checkpoint-340000.ckpt")
    with pytest.raises(ValueError, match="checkpoint-340000.ckpt.*ema_state_dict"):
        TurboVAED.from_pretrained(folder)
    other_layout = TurboVAED.tiny(TINY.replace(decoder_block_out_channels=(8, 8, 16, 32)))
    torch.save({"ema_state_dict": other_layout.state_dict()}, folder / "checkpoint-340000.ckpt")
    with pytest.raises(ValueError, match=r"weights do not fit .*unexpected \['decoder.up_blocks.1.conv_in"):
        TurboVAED.from_pretrained(folder)
    wider = TurboVAED.tiny(TINY.replace(decoder_block_out_channels=(8, 8, 24, 24)))
    torch.save({"ema_state_dict": wider.state_dict()}, folder / "checkpoint-340000.ckpt")
    with pytest.raises(ValueError, match="weight shapes do not fit"):
        TurboVAED.from_pretrained(folder)
    with pytest.raises(ValueError, match="upsample 2x in time"):
        TINY.replace(decoder_spatio_only=(False, True, True, False))


class Callable:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_checkpoint_is_loaded_without_unpickling_code(tmp_path):
    folder = released_folder(tmp_path, TurboVAED.tiny(TINY))
    torch.save({"ema_state_dict": {}, "payload": Callable()}, folder / "checkpoint-340000.ckpt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        TurboVAED.from_pretrained(folder)


@pytest.mark.parametrize("frames", range(1, 12))
def test_every_clip_length_decodes_to_4t_minus_3_frames(frames):
    model = TurboVAED.tiny(TINY)
    assert model.decode(torch.randn(1, 48, frames, 2, 2)).shape[1] == 4 * (frames - 1) + 1


def test_window_plan_matches_the_reference_chunking():
    # 7/7 (released): 32 latent frames of a 5 s clip pad to 35 = 7 + 4 * 7.
    assert window_plan(32, 7, 7) == (3, [(0, 8), (6, 15), (13, 22), (20, 29), (27, 35)])
    assert window_plan(5, 7, 7) == (2, [(0, 7)])
    assert window_plan(7, 7, 7) == (0, [(0, 7)])
    assert window_plan(8, 7, 1) == (0, [(0, 8), (6, 8)])


def _temporally_pointwise(model: TurboVAED) -> TurboVAED:
    """Zero every temporal tap but the centre one: each latent frame then decodes on its own, so a
    correct window stitch must reproduce a single-window decode exactly."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] > 1:
                centre = module.kernel_size[0] // 2
                keep = torch.zeros_like(module.weight)
                keep[:, :, centre] = 1
                module.weight.mul_(keep)
    return model


@pytest.mark.parametrize("frames", [9, 10, 13])  # 9 = 3 + 3 * 2 exactly; 10 and 13 are padded
def test_sliding_window_equals_one_window_when_frames_decode_independently(frames):
    model = _temporally_pointwise(TurboVAED.tiny(TINY, seed=2))
    one_window = TurboVAED(TINY.replace(first_chunk_size=frames)).eval()
    one_window.load_state_dict(model.state_dict())
    assert len(window_plan(frames, TINY.first_chunk_size, TINY.step_size)[1]) > 3
    z = torch.randn(1, 48, frames, 2, 2)
    torch.testing.assert_close(model.decode_pixels(z), one_window.decode_pixels(z), rtol=1e-5, atol=1e-5)


def test_sliding_window_differs_from_one_window_only_near_window_seams():
    # With real temporal kernels context beyond one latent frame is cut at each seam: frames far
    # from every seam still match the single-window decode, frames at a seam do not.
    cfg = TINY.replace(first_chunk_size=9, step_size=9)
    model = TurboVAED.tiny(cfg, seed=3)
    one_window = TurboVAED(cfg.replace(first_chunk_size=18)).eval()
    one_window.load_state_dict(model.state_dict())
    z = torch.randn(1, 48, 18, 2, 2)
    windowed, whole = model.decode_pixels(z), one_window.decode_pixels(z)
    assert windowed.shape == whole.shape == (1, 3, 69, 32, 32)
    seam = 4 * (9 - 1) + 1  # first pixel frame of the second window's own latents
    assert not torch.allclose(windowed[:, :, seam - 2 : seam + 2], whole[:, :, seam - 2 : seam + 2], atol=1e-4)
    torch.testing.assert_close(windowed[:, :, :4], whole[:, :, :4], rtol=1e-5, atol=1e-5)
