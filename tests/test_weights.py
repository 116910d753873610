"""Finding official checkpoints: $RECON_WEIGHTS without network, and a clear offline error.

No test touches the real internet: downloads either go to 127.0.0.1 port 9 (discard; refused at
once) or ``torch.hub.download_url_to_file`` is replaced by a function that fails the test.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import matchers
from matchers import weights
from conftest import shared_path

# Every official checkpoint the sparse matchers know, with the file name it is published under.
SPARSE_CHECKPOINTS = {
    "aliked-t16": "aliked-t16.pth",
    "aliked-n16": "aliked-n16.pth",
    "aliked-n16rot": "aliked-n16rot.pth",
    "aliked-n32": "aliked-n32.pth",
    "disk-depth": "depth-save.pth",
    "disk-epipolar": "epipolar-save.pth",
    "superpoint_v1": "superpoint_v1.pth",
    "gim_superpoint": "gim_lightglue_100h.ckpt",
    "superpoint_lightglue": "superpoint_lightglue.pth",
    "aliked_lightglue": "aliked_lightglue.pth",
    "disk_lightglue": "disk_lightglue.pth",
    "gim_lightglue": "gim_lightglue_100h.ckpt",
}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache, no $RECON_WEIGHTS, and any download attempt refused."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RECON_WEIGHTS", raising=False)

    def refuse(url, *args, **kwargs):
        raise OSError(f"network disabled in this test ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path


def test_registry_knows_every_sparse_checkpoint_url_and_file_name():
    for module in ("aliked", "disk", "superpoint", "lightglue"):  # families register on import
        importlib.import_module(f"matchers.{module}")
    for name, filename in SPARSE_CHECKPOINTS.items():
        entry = weights.checkpoint(name)
        assert entry.filename == filename
        assert entry.url.startswith("https://") and entry.url.endswith("/" + filename), entry.url


def test_unreachable_download_error_names_url_and_path(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RECON_WEIGHTS", raising=False)
    entry = weights.Checkpoint(name="unreachable-test", url="http://127.0.0.1:9/unreachable-test.pth",
                               filename="unreachable-test.pth")
    monkeypatch.setitem(weights._REGISTRY, entry.name, entry)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "unreachable-test.pth"
    with pytest.raises(weights.WeightsNotFoundError) as error:
        weights.resolve(entry.name)
    assert entry.url in str(error.value)
    assert str(expected) in str(error.value)
    assert not list(expected.parent.glob("*")), "a failed download left a file behind"


@pytest.mark.parametrize("model, checkpoint", [("disk_lightglue", "disk_lightglue"), ("superpoint", "superpoint_v1")])
def test_offline_official_weights_error_names_url_and_path(offline, model, checkpoint):
    with pytest.raises(weights.WeightsNotFoundError) as error:
        matchers.load(model, weights="official")
    entry = weights.checkpoint(checkpoint)
    assert entry.url in str(error.value)
    assert str(offline / "torch" / "hub" / "checkpoints" / entry.filename) in str(error.value)


def test_recon_weights_folder_is_used_without_network(offline, monkeypatch):
    folder = shared_path("weights")
    monkeypatch.setenv("RECON_WEIGHTS", str(folder))
    extractor = matchers.load("aliked", weights="official")
    matcher = matchers.load("aliked_lightglue", weights="official")
    official = torch.load(folder / "aliked-n16.pth", weights_only=True)
    for key, value in extractor.state_dict().items():
        assert torch.equal(value, official[key]), key
    official = torch.load(folder / "aliked_lightglue.pth", weights_only=True)
    state = matcher.state_dict()
    assert set(state) == set(official) | {"confidence_thresholds"}
    for key, value in official.items():
        assert torch.equal(state[key], value), key


def test_a_path_to_an_official_file_loads_with_the_registered_layout(offline):
    path = Path(shared_path("weights", "aliked_lightglue.pth"))
    matcher = matchers.load("lightglue", weights=path, features="aliked")
    assert torch.equal(matcher.state_dict()["posenc.Wr.weight"],
                       torch.load(path, weights_only=True)["posenc.Wr.weight"])
