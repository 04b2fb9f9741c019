"""Memory accounting (model/memory.py) and the driver's fit check, from the architecture alone."""

from __future__ import annotations

import pytest

from model.generator import GeneratorConfig
from model.memory import check_replica_fits, clip_peaks, replica_memory, smallest_fitting_tp

DISTILL = GeneratorConfig(model="magihuman-distill", device="cuda", decoder="turbo")
GIB = 2**30


def test_dit_slices_shrink_with_tp_and_the_encoder_stays_on_rank0():
    one, four = replica_memory(DISTILL, 1)[0], replica_memory(DISTILL, 4)
    assert 0.25 * one.device_bytes["dit"] < four[0].device_bytes["dit"] < 0.26 * one.device_bytes["dit"]
    assert four[0].device_bytes["text_encoder"] == one.device_bytes["text_encoder"]
    assert all("text_encoder" not in r.device_bytes for r in four[1:])


def test_peaks_grow_with_resolution_and_length_and_shrink_with_tp():
    peaks = {(p.resolution, p.duration_s): p for p in clip_peaks(DISTILL, 4)}
    assert peaks[("256p", 5)].peak_bytes < peaks[("540p", 5)].peak_bytes < peaks[("1080p", 5)].peak_bytes
    assert peaks[("1080p", 5)].dit_bytes < peaks[("1080p", 15)].dit_bytes
    tp1 = {(p.resolution, p.duration_s): p for p in clip_peaks(DISTILL, 1)}
    # the encoder, the VAEs and the decode window stay whole on rank 0: TP=4 about halves its peak
    assert tp1[("1080p", 15)].peak_bytes > 1.8 * peaks[("1080p", 15)].peak_bytes


def test_a_replica_that_does_not_fit_fails_in_one_line_naming_the_smallest_tp_that_fits():
    smallest = smallest_fitting_tp(DISTILL, 40 * GIB, ["540p"], [5])
    assert smallest is not None and smallest > 1
    with pytest.raises(ValueError) as err:
        check_replica_fits(DISTILL, 1, 40 * GIB, ["540p"], [5])
    message = str(err.value)
    assert "\n" not in message and f"use --tp {smallest}, the smallest that fits" in message
    assert "--text-encoder-device cpu" in message
    check_replica_fits(DISTILL, smallest, 40 * GIB, ["540p"], [5])  # fits: no error


def test_the_text_encoder_on_the_cpu_frees_rank0s_gpu():
    on_cpu = replica_memory(DISTILL.model_copy(update={"text_encoder_device": "cpu"}), 2)
    assert "text_encoder" not in on_cpu[0].device_bytes and on_cpu[0].host_bytes["text_encoder"] > 18e9
    with pytest.raises(ValueError, match="text_encoder_device='cuda' needs device='cuda'"):
        GeneratorConfig(model="tiny", device="cpu", text_encoder_device="cuda")


def test_the_cluster_fit_check_decides_on_the_gpu_size_it_is_given_and_skips_cpu_replicas():
    from model.placement import check_cluster_fit

    smallest = smallest_fitting_tp(DISTILL, 48 * GIB, ["256p", "1080p"], [15])
    assert smallest is not None and smallest > 1
    with pytest.raises(ValueError) as err:
        check_cluster_fit(DISTILL, 1, ["256p", "1080p"], gpu_bytes=48 * GIB)
    assert "\n" not in str(err.value) and f"use --tp {smallest}, the smallest that fits" in str(err.value)
    check_cluster_fit(DISTILL, smallest, ["256p", "1080p"], gpu_bytes=48 * GIB)  # fits: no error
    # A CPU replica is not checked against GPUs at all (and asks no cluster: no Ray runs here).
    check_cluster_fit(DISTILL.model_copy(update={"device": "cpu"}), 1, ["1080p"], gpu_bytes=1)
