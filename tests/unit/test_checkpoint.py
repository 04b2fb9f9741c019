"""Checkpoint directories: single file, shards, zstd shards, config.json or preset, and bad ones."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.magihuman import PRESETS, CheckpointError, load_dit, save_checkpoint
from model.magihuman.checkpoint import checkpoint_arch

DATA = Path(__file__).resolve().parents[1] / "data" / "magihuman-tiny"


@pytest.fixture(scope="module")
def state_dict():
    return load_file(str(DATA / "base.weights.safetensors"))


@pytest.fixture(scope="module")
def vector():
    return load_file(str(DATA / "base.io.safetensors"))


def released_layout(directory: Path, with_config: bool = True) -> Path:
    """The test vector as a checkpoint directory: model.safetensors (+ config.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / "base.weights.safetensors", directory / "model.safetensors")
    if with_config:
        shutil.copyfile(DATA / "base.json", directory / "config.json")
    return directory


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


def test_loads_released_layout_with_config_json(tmp_path, state_dict, vector):
    dit = load_dit(released_layout(tmp_path / "ckpt"))
    assert dit.load_report.loaded == len(state_dict) and not dit.load_report.ignored
    for name, tensor in state_dict.items():
        assert torch.equal(dit.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in dit.parameters())
    v_video, _ = dit.velocity(vector["latent_video"], vector["latent_audio"], vector["txt_feat"], [17])
    assert ((v_video - vector["v_video"]).norm() / vector["v_video"].norm()) < 0.025


def test_without_config_json_needs_a_preset(tmp_path):
    ckpt = released_layout(tmp_path / "ckpt", with_config=False)
    with pytest.raises(CheckpointError, match="no config.json.*magihuman-base"):
        load_dit(ckpt)
    assert load_dit(ckpt, arch="tiny").load_report.loaded > 0
    with pytest.raises(CheckpointError, match=r"'adapter.audio_embedder.bias'.*shape \[128\].*expects \[5120\]"):
        load_dit(ckpt, arch="magihuman-base", device="meta")


@pytest.mark.parametrize("compress", [False, True], ids=["shards", "zstd-shards"])
def test_sharded_checkpoint_loads_to_the_same_model(tmp_path, state_dict, compress):
    reference = load_dit(released_layout(tmp_path / "single"))
    sharded = tmp_path / "sharded"
    save_checkpoint(state_dict, sharded, arch=reference.arch, max_shard_bytes=1 << 20, compress=compress)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 4
    suffix = ".safetensors.zst" if compress else ".safetensors"
    assert sorted(p.name for p in sharded.glob("model-*")) == sorted(s.replace(".safetensors", suffix) for s in shards)

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dit = load_dit(sharded, scratch_dir=scratch)
    assert_same_weights(dit, reference)
    assert sorted(dit.load_report.files) == shards
    assert list(scratch.iterdir()) == []  # decompressed shards do not outlive the load


def test_single_compressed_file_loads(tmp_path, state_dict):
    save_checkpoint(state_dict, tmp_path / "ckpt", compress=True)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["model.safetensors.zst"]
    assert load_dit(tmp_path / "ckpt", arch="tiny").load_report.loaded == len(state_dict)


def test_absent_rope_bands_are_recomputed(tmp_path, state_dict):
    without = {k: v for k, v in state_dict.items() if k != "adapter.rope.bands"}
    save_checkpoint(without, tmp_path / "ckpt")
    dit = load_dit(tmp_path / "ckpt", arch="tiny")
    torch.testing.assert_close(dit.adapter.rope.bands, state_dict["adapter.rope.bands"])


def test_missing_shard_file_is_named(tmp_path, state_dict):
    save_checkpoint(state_dict, tmp_path / "ckpt", max_shard_bytes=1 << 20)
    shard = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())["weight_map"][
        "block.layers.2.mlp.down_proj.weight"
    ]
    (tmp_path / "ckpt" / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"{shard} \(or {shard}.zst\) is missing \(holds block\."):
        load_dit(tmp_path / "ckpt", arch="tiny")


def test_empty_directory_and_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        load_dit(tmp_path, arch="tiny")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_dit(tmp_path / "nope", arch="tiny")


def write_variant(tmp_path: Path, state_dict, change) -> Path:
    tensors = dict(state_dict)
    change(tensors)
    (tmp_path / "ckpt").mkdir()
    save_file(tensors, str(tmp_path / "ckpt" / "model.safetensors"))
    return tmp_path / "ckpt"


def test_wrong_shape_names_the_parameter(tmp_path, state_dict):
    name = "block.layers.3.attention.linear_qkv.weight"
    ckpt = write_variant(tmp_path, state_dict, lambda t: t.update({name: t[name][:200].clone()}))
    with pytest.raises(CheckpointError, match=rf"'{name}'.*shape \[200, 128\].*expects \[260, 128\]"):
        load_dit(ckpt, arch="tiny")


def assert_loaded_as_released(dit, reference) -> None:
    """Every tensor has the dtype the model keeps it in and the value the test vector holds."""
    for name, tensor in reference.state_dict().items():
        ours = dit.state_dict()[name]
        assert ours.dtype == tensor.dtype, name
        torch.testing.assert_close(ours, tensor, rtol=0, atol=0, msg=name)


def test_an_fp32_dit_is_cast_to_the_dtypes_the_model_keeps(tmp_path, state_dict, vector):
    """Released distill and SR folders are fp32 on disk: linears become bf16, the rest stays fp32."""
    reference = load_dit(released_layout(tmp_path / "ref"))
    ckpt = write_variant(tmp_path, state_dict, lambda t: t.update({k: v.float() for k, v in t.items()}))
    dit = load_dit(ckpt, arch="tiny")
    assert_loaded_as_released(dit, reference)  # bf16 -> fp32 -> bf16 is exact
    bf16 = {k for k, v in state_dict.items() if v.dtype == torch.bfloat16}
    assert bf16 and set(dit.load_report.casts) == bf16
    assert set(dit.load_report.casts.values()) == {("float32", "bfloat16")}
    v_video, _ = dit.velocity(vector["latent_video"], vector["latent_audio"], vector["txt_feat"], [17])
    assert ((v_video - vector["v_video"]).norm() / vector["v_video"].norm()) < 0.025


def test_a_bf16_dit_is_cast_to_the_dtypes_the_model_keeps(tmp_path, state_dict):
    """The base folder is bf16 on disk: norms, embedders, adapter and final layers become fp32."""
    ckpt = write_variant(tmp_path, state_dict, lambda t: t.update({k: v.bfloat16() for k, v in t.items()}))
    dit = load_dit(ckpt, arch="tiny")
    fp32 = {k for k, v in state_dict.items() if v.dtype == torch.float32}
    assert fp32 and set(dit.load_report.casts) == fp32
    assert set(dit.load_report.casts.values()) == {("bfloat16", "float32")}
    for name in fp32:
        assert dit.state_dict()[name].dtype == torch.float32
        torch.testing.assert_close(dit.state_dict()[name], state_dict[name].bfloat16().float(), rtol=0, atol=0)


def test_index_shards_one_zstd_shard_and_an_unused_tensor_in_fp32_load(tmp_path, state_dict):
    reference = load_dit(released_layout(tmp_path / "ref"))
    tensors = {k: v.float() for k, v in state_dict.items()} | {"audio_head.extra.weight": torch.ones(3)}
    ckpt = save_checkpoint(tensors, tmp_path / "ckpt", max_shard_bytes=2 << 20)
    shards = sorted(p.name for p in ckpt.glob("model-*.safetensors"))
    assert len(shards) >= 3
    compress_one(ckpt, shards[1])
    dit = load_dit(ckpt, arch="tiny")
    assert_loaded_as_released(dit, reference)
    assert sorted(dit.load_report.files) == shards
    assert dit.load_report.ignored == ["audio_head.extra.weight"]
    assert len(dit.load_report.casts) == sum(v.dtype == torch.bfloat16 for v in state_dict.values())


def compress_one(ckpt: Path, shard: str) -> None:
    import zstandard

    (ckpt / f"{shard}.zst").write_bytes(zstandard.ZstdCompressor().compress((ckpt / shard).read_bytes()))
    (ckpt / shard).unlink()


def test_a_non_floating_tensor_names_the_parameter(tmp_path, state_dict):
    name = "block.layers.0.mlp.down_proj.weight"
    ckpt = write_variant(tmp_path, state_dict, lambda t: t.update({name: t[name].to(torch.int32)}))
    with pytest.raises(CheckpointError, match=rf"'{name}'.*dtype I32.*bfloat16.*floating"):
        load_dit(ckpt, arch="tiny")


def test_config_json_of_another_format_is_not_the_architecture(tmp_path):
    ckpt = released_layout(tmp_path / "ckpt", with_config=False)
    (ckpt / "config.json").write_text(json.dumps({"_class_name": "DiTModel", "num_layers": 6, "dtype": "float32"}))
    with pytest.raises(CheckpointError, match="config.json is not in paddock's architecture format.*pass arch="):
        load_dit(ckpt)
    tiny = PRESETS["tiny"]
    assert checkpoint_arch(ckpt, fallback=tiny) == tiny
    assert load_dit(ckpt, arch=checkpoint_arch(ckpt, fallback=tiny)).load_report.loaded > 0
    # paddock's own formats: what save_checkpoint writes, and the test vector's (reference field names)
    (ckpt / "config.json").write_text(json.dumps(tiny.replace(frame_receptive_field=3).to_dict()))
    assert checkpoint_arch(ckpt, fallback=tiny).frame_receptive_field == 3
    shutil.copyfile(DATA / "base.json", ckpt / "config.json")
    assert checkpoint_arch(ckpt, fallback=PRESETS["magihuman-base"]) == tiny


def test_super_resolution_folders_take_the_token_layout_of_the_preset(tmp_path):
    """The released SR folders do not say they use v1 coordinates and frame-local attention."""
    ckpt = released_layout(tmp_path / "ckpt")  # config.json: v2 coordinates, global attention
    sr_preset = PRESETS["tiny"].replace(coords_style="v1", local_attn_layers=(0, 2), frame_receptive_field=2)
    arch = checkpoint_arch(ckpt, fallback=sr_preset, layout=sr_preset)
    assert (arch.coords_style, arch.local_attn_layers, arch.frame_receptive_field) == ("v1", (0, 2), 2)
    assert checkpoint_arch(ckpt, fallback=sr_preset).coords_style == "v2"


def test_missing_parameter_is_named(tmp_path, state_dict):
    name = "final_norm_audio.weight"
    ckpt = write_variant(tmp_path, state_dict, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"lacks 1 parameters of the model: {name}"):
        load_dit(ckpt, arch="tiny")


def test_a_tensor_the_model_does_not_use_is_logged_and_ignored(tmp_path, state_dict, caplog):
    ckpt = write_variant(tmp_path, state_dict, lambda t: t.update({"block.layers.6.mlp.pre_norm.weight": torch.zeros(128)}))
    with caplog.at_level("WARNING", logger="model.magihuman.checkpoint"):
        dit = load_dit(ckpt, arch="tiny")
    assert dit.load_report.ignored == ["block.layers.6.mlp.pre_norm.weight"]
    assert dit.load_report.loaded == len(state_dict)
    assert "block.layers.6.mlp.pre_norm.weight" in caplog.text and "ignored" in caplog.text


def test_random_weights_without_checkpoint_are_seeded():
    a, b, c = load_dit(None, arch="tiny", seed=1), load_dit(None, arch="tiny", seed=1), load_dit(None, arch="tiny", seed=2)
    assert_same_weights(a, b)
    assert not torch.equal(a.final_linear_video.weight, c.final_linear_video.weight)
    with pytest.raises(CheckpointError, match="pass arch="):
        load_dit(None)


def test_a_zstd_shard_without_room_to_decompress_names_the_folder_and_tmpdir(tmp_path, state_dict, monkeypatch):
    from collections import namedtuple

    import model.magihuman.checkpoint as checkpoint

    save_checkpoint(state_dict, tmp_path / "ckpt", compress=True)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: usage(10**6, 10**6 - 1024, 1024))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(checkpoint.tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    with pytest.raises(CheckpointError, match=rf"model.safetensors.zst: decompressing needs .* GiB in {tmp_path}, "
                                              r"which has 0.0 GiB free; point TMPDIR at a folder with room"):
        load_dit(tmp_path / "ckpt", arch="tiny")
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".safetensors"]  # nothing half-written
