"""Weight sources: the bundled file decoded and verified, the cache, torchvision and local files."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import pytest
import torch

from nst_batch.engine import weights as W
from nst_batch.engine.vgg import CONV_NAMES, conv_key
from nst_batch.errors import WeightsError


def test_bundled_decodes_to_the_raw_file(weights: W.Weights) -> None:
    raw = torch.load(W.bundled_path(), map_location="cpu", weights_only=True)
    assert weights.sha256 == W.BUNDLED_SHA256
    assert len(weights.state) == 32
    for name in CONV_NAMES:
        block, i = name.removeprefix("conv").split("_")
        keras = f"block{block}_conv{i}"
        table, indices = raw[keras + "_W_table"], raw[keras + "_W_q"].long()
        expected = table[indices]
        if name == "conv1_1":
            expected = expected.flip(1)  # stored BGR-input; decoded for RGB input
        key = conv_key(name)
        assert torch.equal(weights.state[f"{key}.weight"], expected), name
        assert torch.equal(weights.state[f"{key}.bias"], raw[keras + "_b"]), name
        # Every decoded value is one of the layer's 256 centroids.
        assert torch.isin(weights.state[f"{key}.weight"], table).all()


def test_bundled_cache_is_written_and_reused(tmp_path: Path) -> None:
    first = W.load_weights(W.BUNDLED, cache_dir=tmp_path)
    cached = list(tmp_path.glob("vgg19-bundled-*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = W.load_weights(W.BUNDLED, cache_dir=tmp_path)
    assert cached[0].stat().st_mtime_ns == stamp  # read, not rewritten
    for key, value in first.state.items():
        assert torch.equal(second.state[key], value)


def test_damaged_cache_is_decoded_again(tmp_path: Path) -> None:
    W.load_weights(W.BUNDLED, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("vgg19-bundled-*.pt")
    cached.write_bytes(b"not a torch file")
    again = W.load_weights(W.BUNDLED, cache_dir=tmp_path)
    assert again.state["0.weight"].shape == (64, 3, 3, 3)
    assert torch.load(cached, weights_only=True)["0.weight"].shape == (64, 3, 3, 3)


def test_corrupt_bundled_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / W.BUNDLED_FILE
    shutil.copy(W.bundled_path(), bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    source = W.WeightsSource("bundled", W.CAFFE_NORMALIZATION, bad)
    with pytest.raises(WeightsError, match="sha256"):
        W.load_weights(source, cache_dir=tmp_path)


def test_torchvision_offline_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as info:
        W.load_weights(W.TORCHVISION)
    message = str(info.value)
    assert "vgg19-dcbb9e9d.pth" in message
    assert str(tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth") in message


def test_torchvision_file_with_wrong_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: W.Weights
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    placed = tmp_path / "checkpoints" / W.TORCHVISION_FILE
    placed.parent.mkdir()
    torch.save({f"features.{k}": v for k, v in weights.state.items()}, placed)
    with pytest.raises(WeightsError, match="is not torchvision's"):
        W.load_weights(W.TORCHVISION)


def test_local_torchvision_layout_file(tmp_path: Path, weights: W.Weights) -> None:
    path = tmp_path / "vgg19.pth"
    full = {f"features.{k}": v for k, v in weights.state.items()}
    full["classifier.0.weight"] = torch.zeros(4, 4)  # a whole-model file: classifier ignored
    torch.save(full, path)
    loaded = W.load_weights(W.resolve_source(str(path)))
    assert loaded.source.normalization == W.IMAGENET_NORMALIZATION
    assert loaded.sha256 == W.sha256_file(path)
    assert set(loaded.state) == set(weights.state)
    assert torch.equal(loaded.state["34.weight"], weights.state["34.weight"])


def test_local_safetensors_file(tmp_path: Path, weights: W.Weights) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "vgg19.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in weights.state.items()}, str(path))
    loaded = W.load_weights(W.resolve_source(str(path)))
    assert torch.equal(loaded.state["0.weight"], weights.state["0.weight"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.pth", None, "does not exist"),
        ("garbage.pth", b"hello", "not a readable weights file"),
        ("empty.pth", {}, "no VGG19 feature weights"),
        ("weights.bin", b"", "expected 'bundled', 'torchvision' or a path"),
    ],
)
def test_bad_local_files(tmp_path: Path, name: str, content: object, message: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        W.load_weights(W.resolve_source(str(path)))
