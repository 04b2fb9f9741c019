"""Samplers, checked with models whose velocity is known, against an independent
implementation of the reference's flow UniPC and of its distilled step."""

import numpy as np
import pytest
import torch

from model.magihuman import denoise, load_dit, prepare_sr_latents
from model.magihuman.sampler import make_scheduler, zero_snr_signal_levels


class TextScaledVelocity:
    """A nonlinear velocity field that depends on each sample's real text (so CFG matters)."""

    def __init__(self):
        self.calls = []

    def velocity(self, latent_video, latent_audio, text, text_lens, coords_style=None, frame_receptive_field=None):
        self.calls.append((latent_video.clone(), list(text_lens)))
        c = torch.stack([text[b, :n].mean() for b, n in enumerate(text_lens)])
        return (
            0.3 * latent_video + torch.tanh(latent_video) * c.view(-1, 1, 1, 1, 1),
            0.2 * latent_audio + c.view(-1, 1, 1),
        )


def reference_schedule(steps: int, shift: float):
    """The reference's set_timesteps, written out: linspace from float32(0.999) to 0, shifted."""
    sigmas = np.linspace(float(np.float32(0.999)), 0.0, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = (sigmas * 1000).astype(np.int64)
    return torch.tensor(np.append(sigmas, 0.0), dtype=torch.float32), timesteps


def reference_flow_unipc(velocity, x: torch.Tensor, steps: int, shift: float) -> torch.Tensor:
    """UniPC-bh2, order 2, data prediction, on flow sigmas (alpha = 1 - sigma), with the corrector
    after every step but the first and first order at the start and the end."""
    sig, timesteps = reference_schedule(steps, shift)

    def lam(s):
        return torch.log(1 - s) - torch.log(s)

    preds, last_x, last_order = [], None, None
    for i, t in enumerate(timesteps):
        m = x - sig[i] * velocity(x, int(t))
        if i > 0:  # UniC: redo the last step from last_x, now knowing m
            s0, st = sig[i - 1], sig[i]
            h = lam(st) - lam(s0)
            phi = torch.expm1(-h)
            x = st / s0 * last_x - (1 - st) * phi * preds[-1]
            if last_order == 1:
                corr = 0.5 * (m - preds[-1])
            else:
                r = (lam(sig[i - 2]) - lam(s0)) / h
                g1 = (phi / -h - 1) / phi
                g2 = 2 * ((phi / -h - 1) / -h - 0.5) / phi
                rho = torch.linalg.solve(torch.tensor([[1.0, 1.0], [r, 1.0]]), torch.stack([g1, g2]))
                corr = rho[0] * (preds[-2] - preds[-1]) / r + rho[1] * (m - preds[-1])
            x = x - (1 - st) * phi * corr
        preds.append(m)
        order = min(2, steps - i, i + 1)
        s0, st = sig[i], sig[i + 1]
        h = lam(st) - lam(s0)
        phi = torch.expm1(-h)
        last_x, last_order = x, order
        x = st / s0 * x - (1 - st) * phi * m
        if order == 2:
            r = (lam(sig[i - 1]) - lam(s0)) / h
            x = x - (1 - st) * phi * 0.5 * (preds[-2] - m) / r
    return x


@pytest.mark.parametrize("steps", [1, 2, 5, 8, 32])
def test_diffusers_schedule_is_the_reference_schedule(steps):
    sigmas, timesteps = reference_schedule(steps, 5.0)
    scheduler = make_scheduler(steps, 5.0)
    assert scheduler.timesteps.tolist() == timesteps.tolist()
    torch.testing.assert_close(scheduler.sigmas, sigmas, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [2, 5, 12, 32])
def test_base_mode_is_reference_unipc_with_scheduled_cfg(steps):
    g = torch.Generator().manual_seed(steps)
    video, audio = torch.randn(2, 48, 2, 4, 4, generator=g), torch.randn(2, 6, 64, generator=g)
    text, null = torch.rand(2, 5, 8, generator=g) + 0.5, torch.rand(1, 4, 8, generator=g) - 0.5
    lens, null_lens = [5, 3], [4]
    model = TextScaledVelocity()
    out_video, out_audio = denoise(
        model, video, audio, text, lens, steps=steps, mode="base", null_text=null, null_text_lens=null_lens
    )
    assert len(model.calls) == steps and all(len(c[1]) == 4 for c in model.calls)  # cond + uncond in one batch

    c = torch.stack([text[b, : lens[b]].mean() for b in range(2)]).view(-1, 1, 1, 1, 1)
    u = null[0, :4].mean()

    def guided_video(x, t):
        scale = 5.0 if t > 500 else 2.0
        cond, uncond = 0.3 * x + torch.tanh(x) * c, 0.3 * x + torch.tanh(x) * u
        return uncond + scale * (cond - uncond)

    def guided_audio(x, t):
        cond, uncond = 0.2 * x + c.view(-1, 1, 1), 0.2 * x + u
        return uncond + 5.0 * (cond - uncond)

    torch.testing.assert_close(out_video, reference_flow_unipc(guided_video, video, steps, 5.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_audio, reference_flow_unipc(guided_audio, audio, steps, 5.0), rtol=1e-4, atol=1e-4)


def test_unipc_lands_on_the_data_when_the_model_knows_it():
    # A model that always predicts the same clean sample x0 makes the exponential integrator exact.
    target_video, target_audio = torch.randn(1, 48, 2, 4, 4), torch.randn(1, 7, 64)
    sigmas = make_scheduler(6, 5.0).sigmas

    class Oracle:
        step = 0

        def velocity(self, v, a, text, lens, coords_style=None, frame_receptive_field=None):
            s = sigmas[self.step]
            self.step += 1
            return (v - target_video.repeat(v.shape[0], 1, 1, 1, 1)) / s, (a - target_audio.repeat(a.shape[0], 1, 1)) / s

    text = torch.ones(1, 3, 8)
    video, audio = denoise(
        Oracle(), torch.randn(1, 48, 2, 4, 4), torch.randn(1, 7, 64), text, [3], steps=6, mode="base",
        null_text=text, null_text_lens=[3],
    )
    torch.testing.assert_close(video, target_video, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(audio, target_audio, rtol=1e-4, atol=1e-4)


def test_distill_mode_is_the_reference_renoising_step():
    g = torch.Generator().manual_seed(0)
    video, audio = torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 6, 64, generator=g)
    text = torch.rand(1, 4, 8, generator=g)
    out = denoise(TextScaledVelocity(), video, audio, text, [4], steps=8, generator=torch.Generator().manual_seed(9))

    sigmas, _ = reference_schedule(8, 5.0)
    noise = torch.Generator().manual_seed(9)
    x_video, x_audio, c = video.clone(), audio.clone(), text[0].mean()
    for i in range(8):
        v_video, v_audio = 0.3 * x_video + torch.tanh(x_video) * c, 0.2 * x_audio + c
        x_video = sigmas[i + 1] * torch.randn(x_video.shape, generator=noise) + (1 - sigmas[i + 1]) * (x_video - sigmas[i] * v_video)
        x_audio = sigmas[i + 1] * torch.randn(x_audio.shape, generator=noise) + (1 - sigmas[i + 1]) * (x_audio - sigmas[i] * v_audio)
    torch.testing.assert_close(out[0], x_video, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], x_audio, rtol=1e-5, atol=1e-5)


def test_image_to_video_keeps_the_first_latent_frame_pinned():
    model = TextScaledVelocity()
    video = torch.randn(1, 48, 3, 4, 4)
    condition = torch.randn(1, 48, 1, 4, 4)
    out, _ = denoise(
        model, video, torch.randn(1, 5, 64), torch.ones(1, 2, 8), [2], steps=4, video_condition=condition,
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(out[:, :, :1], condition, rtol=0, atol=0)
    for seen, _ in model.calls:  # the model sees the condition at every step
        torch.testing.assert_close(seen[:, :, :1], condition, rtol=0, atol=0)
    assert not torch.allclose(out[:, :, 1:], video[:, :, 1:])


def test_sr_mode_updates_video_only_and_caps_early_frame_guidance():
    g = torch.Generator().manual_seed(2)
    video, audio = torch.randn(1, 48, 16, 4, 4, generator=g), torch.randn(1, 9, 64, generator=g)
    text, null = torch.full((1, 3, 8), 1.0), torch.full((1, 3, 8), 0.0)
    model = TextScaledVelocity()
    out_video, out_audio = denoise(model, video, audio, text, [3], mode="sr", null_text=null, null_text_lens=[3])
    assert len(model.calls) == 5  # the SR pass takes 5 steps by default
    torch.testing.assert_close(out_audio, audio, rtol=0, atol=0)

    def guided(scale):
        return lambda x, t: 0.3 * x + torch.tanh(x) * scale  # uncond (c=0) + scale * (cond (c=1) - uncond)

    expected_late = reference_flow_unipc(guided(3.5), video, 5, 5.0)
    expected_early = reference_flow_unipc(guided(2.0), video, 5, 5.0)
    torch.testing.assert_close(out_video[:, :, 13:], expected_late[:, :, 13:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_video[:, :, :13], expected_early[:, :, :13], rtol=1e-4, atol=1e-4)


def test_base_mode_needs_a_null_prompt():
    with pytest.raises(ValueError, match="null_text"):
        denoise(TextScaledVelocity(), torch.randn(1, 48, 1, 2, 2), torch.randn(1, 2, 64), torch.ones(1, 2, 8), [2], mode="base")


@pytest.mark.parametrize("mode", ["distill", "base"])
def test_batch_equals_one_by_one_on_the_tiny_dit(mode):
    dit = load_dit(None, arch="tiny", seed=7, compute_dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    video, audio = torch.randn(2, 48, 2, 4, 4, generator=g), torch.randn(2, 5, 64, generator=g)
    text, null = torch.randn(2, 6, 96, generator=g), torch.randn(1, 4, 96, generator=g)
    lens = [6, 3]
    kwargs = dict(steps=3, mode=mode, null_text=null, null_text_lens=[4])
    seeds = [11, 12]
    batch = denoise(dit, video, audio, text, lens, generator=[torch.Generator().manual_seed(s) for s in seeds], **kwargs)
    for i in range(2):
        one = denoise(
            dit, video[i : i + 1], audio[i : i + 1], text[i : i + 1], lens[i : i + 1],
            generator=[torch.Generator().manual_seed(seeds[i])], **kwargs,
        )
        torch.testing.assert_close(batch[0][i], one[0][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batch[1][i], one[1][0], rtol=1e-4, atol=1e-4)
    assert batch[0].isfinite().all() and not torch.allclose(batch[0][0], batch[0][1])


def test_prepare_sr_latents_renoises_the_upsampled_base_latent():
    levels = zero_snr_signal_levels()
    assert levels[0] > 0.999 and levels[-1] == 0 and (levels[1:] <= levels[:-1]).all()
    base_video, base_audio = torch.randn(1, 48, 3, 4, 6), torch.randn(1, 9, 64)
    video, audio = prepare_sr_latents(base_video, base_audio, 8, 12, generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 48, 3, 8, 12) and audio.shape == base_audio.shape
    noise = torch.Generator().manual_seed(0)
    video_noise, audio_noise = torch.randn(video.shape, generator=noise), torch.randn(audio.shape, generator=noise)
    level = levels[220].item()
    upsampled = (video - video_noise * (1 - level**2) ** 0.5) / level
    # Aligned corners: the corner pixels of the upsampled latent are the base latent's corners.
    torch.testing.assert_close(upsampled[..., ::7, ::11], base_video[..., ::3, ::5], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(audio, 0.7 * audio_noise + 0.3 * base_audio)
