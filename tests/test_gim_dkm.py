"""DKMv3 / GIM: official key layouts, Lightning checkpoint remapping, GIM's inference recipe,
and the dense matcher's sparse output checked on an exact synthetic warp."""
from __future__ import annotations

import sys
import types

import torch

import matchers
from matchers import weights
from matchers.backbones.resnet import ResNet50
from matchers.dkm import CAB, DKMv3
from matchers.gim import GIMDKM, GIMRoMa, gim_dkm_state_dict, lightning_state_dict
from matchers.roma import DenseMatcher
from matchers.roma.ops import pixel_grid
from tests.test_roma import assert_matches_manifest, manifest


def test_gim_roma_state_dict_equals_official_manifest() -> None:
    with torch.device("meta"):
        model = GIMRoMa()
    assert_matches_manifest(model.state_dict(), manifest("gim_roma"))
    assert_matches_manifest(model.encoder.dinov2.state_dict(), manifest("gim_roma_dinov2_vitl14_coarse"))


def test_gim_dkm_state_dict_equals_official_manifest() -> None:
    with torch.device("meta"):
        model = GIMDKM()
    assert_matches_manifest(model.state_dict(), manifest("gim_dkm"))


def test_resnet50_uses_torchvision_names() -> None:
    # torchvision's resnet50 = DKM's encoder.net keys plus the classifier fc.{weight,bias}.
    expected = {k[len("encoder.net."):]: v for k, v in manifest("gim_dkm").items() if k.startswith("encoder.net.")}
    expected["fc.weight"] = {"shape": [1000, 2048], "dtype": "float32"}
    expected["fc.bias"] = {"shape": [1000], "dtype": "float32"}
    with torch.device("meta"):
        net = ResNet50(include_fc=True)
    assert_matches_manifest(net.state_dict(), expected)
    assert len(expected) == 320  # torchvision resnet50: 53 convs/BNs (+ fc), 320 state-dict entries


def test_resnet50_pyramid_strides() -> None:
    features = ResNet50().eval()(torch.rand(1, 3, 64, 96))
    assert {s: tuple(f.shape[1:]) for s, f in features.items()} == {
        1: (3, 64, 96), 2: (64, 32, 48), 4: (256, 16, 24), 8: (512, 8, 12), 16: (1024, 4, 6), 32: (2048, 2, 3)}


def test_lightning_checkpoints_are_remapped_like_gims_loader() -> None:
    keys = list(manifest("gim_dkm"))
    ckpt = {"epoch": 3, "state_dict": {**{"model." + k: torch.zeros(1) for k in keys},
                                       "model.encoder.net.fc.weight": torch.zeros(1),
                                       "model.encoder.net.fc.bias": torch.zeros(1)}}
    assert list(gim_dkm_state_dict(ckpt)) == keys
    roma_keys = list(manifest("gim_roma"))
    remapped = lightning_state_dict({"state_dict": {"model." + k: torch.zeros(1) for k in roma_keys}})
    assert list(remapped) == roma_keys
    assert set(lightning_state_dict({"model.model.x": torch.zeros(1)})) == {"model.x"}  # one prefix only


def test_lightning_file_with_pickled_configs_loads_weights_only(tmp_path, monkeypatch) -> None:
    # A Lightning checkpoint as GIM's trainer writes it: hyper-parameters are yacs CfgNodes.
    module = types.ModuleType("yacs.config")
    cfg_node = type("CfgNode", (dict,), {"__module__": "yacs.config"})
    module.CfgNode = cfg_node
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    keys = list(manifest("gim_dkm"))[:5]
    path = tmp_path / "gim_dkm_100h.ckpt"
    torch.save({"epoch": 1, "hyper_parameters": {"pcfg": cfg_node(weight="gim_dkm", sub=cfg_node(x=1))},
                "state_dict": {**{"model." + k: torch.full((2,), float(i)) for i, k in enumerate(keys)},
                               "model.encoder.net.fc.bias": torch.zeros(3)}}, path)
    monkeypatch.delitem(sys.modules, "yacs.config")  # the reader does not have yacs
    state = weights.load_state_dict(path, entry="gim_dkm_100h")
    assert list(state) == keys and all(torch.equal(state[k], torch.full((2,), float(i))) for i, k in enumerate(keys))


def test_registry_builds_gim_variants_with_gim_recipe() -> None:
    assert {"roma_outdoor", "roma_indoor", "gim_roma", "gim_dkm"} <= set(matchers.names())
    conf = matchers.model_class("gim_dkm").default_conf
    assert conf["coarse_res"] == (672, 896) and conf["upsample_res"] == (1152, 1536)
    assert not conf["normalize"] and conf["pad_to_aspect"] and conf["mask_black"]
    assert matchers.model_class("gim_roma").default_conf["upsample_res"] == (1344, 1344)


def test_cab_gates_new_features_and_adds_old() -> None:
    cab = CAB(4, 2)
    old, new = torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3)
    gate = torch.sigmoid(cab.conv2(torch.relu(cab.conv1(torch.cat((old, new), 1).mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(cab(old, new), gate * new + old)


def test_gim_padding_matches_get_padding_size() -> None:
    model = DKMv3.__new__(DKMv3)  # padding() only reads the configuration
    model.conf = dict(GIMDKM.default_conf)
    assert model.padding(torch.zeros(1, 3, 600, 600)) == (100, 100, 0, 0)  # to 4:3 landscape
    assert model.padding(torch.zeros(1, 3, 300, 800)) == (0, 0, 150, 150)
    assert model.padding(torch.zeros(1, 3, 480, 640)) == (0, 0, 0, 0)


class TranslationMatcher(DenseMatcher):
    """An exact synthetic dense matcher: image1 is image0 shifted by ``shift`` pixels.

    It replaces only the network (``match_tensors``): the true symmetric warp, in each padded
    image's normalised coordinates, with certainty 1 where the target lies inside the other
    image. Preprocessing, GIM's black-pixel mask, sampling, padding removal and the conversion
    to pixels are the real code.
    """

    def __init__(self, shift: tuple[float, float], sizes: list[tuple[int, int]], **conf) -> None:
        super().__init__(**conf)
        self.shift, self.sizes = torch.tensor(shift), sizes
        self.pads = [self.padding(torch.zeros(1, 3, *size)) for size in sizes]

    def match_tensors(self, im_A, im_B, im_A_high_res=None, im_B_high_res=None):
        h, w = self.conf["coarse_res"]
        coords = pixel_grid(1, h, w).permute(0, 2, 3, 1)[0]
        padded = [torch.tensor((size[1] + pad[0] + pad[1], size[0] + pad[2] + pad[3]), dtype=torch.float32)
                  for size, pad in zip(self.sizes, self.pads)]
        offsets = [torch.tensor(pad[::2], dtype=torch.float32) for pad in self.pads]
        halves, certainties = [], []
        for src, dst, sign in ((0, 1, 1.0), (1, 0, -1.0)):
            target = padded[src] * (coords + 1) / 2 - 0.5 - offsets[src] + sign * self.shift
            inside = ((target >= -0.5) & (target < torch.tensor(self.sizes[dst][::-1]) - 0.5)).all(-1)
            normalised = 2 * (target + 0.5 + offsets[dst]) / padded[dst] - 1
            halves.append(torch.cat((coords, normalised) if src == 0 else (normalised, coords), dim=-1))
            certainties.append(inside.float())
        return torch.cat(halves, dim=1)[None], torch.cat(certainties, dim=1)[None]


def test_sparse_matches_are_exact_in_original_pixels_with_gim_padding() -> None:
    sizes = [(50, 90), (70, 60)]  # (H, W): landscape and portrait, padded differently to 4:3
    model = TranslationMatcher((7.0, -4.0), sizes, coarse_res=(24, 32), upsample=False, pad_to_aspect=True,
                               mask_black=True, max_matches=300)
    assert model.pads[0] != (0, 0, 0, 0) and model.pads[1] != (0, 0, 0, 0)
    images = [torch.rand(1, 3, *size) * 0.5 + 0.5 for size in sizes]
    out = model({"image0": images[0], "image1": images[1]})
    assert 100 < len(out["scores"]) <= 300
    torch.testing.assert_close(out["keypoints1"] - out["keypoints0"], torch.tensor([7.0, -4.0]).expand(
        len(out["scores"]), 2), atol=1e-4, rtol=0)
    for key, (h, w) in zip(("keypoints0", "keypoints1"), sizes):
        assert out[key][:, 0].min() >= -0.5 and out[key][:, 0].max() < w - 0.5
        assert out[key][:, 1].min() >= -0.5 and out[key][:, 1].max() < h - 0.5


def test_black_input_pixels_get_zero_certainty() -> None:
    sizes = [(60, 80), (60, 80)]
    model = TranslationMatcher((3.0, 2.0), sizes, coarse_res=(30, 40), upsample=False, mask_black=True)
    images = [torch.rand(1, 3, *size) * 0.5 + 0.5 for size in sizes]
    images[0][..., :, :20] = 0.0  # a black band on the left of image 0: the first 10 of 40 warp columns
    warp, certainty = model.match(images[0], images[1])
    assert warp.shape == (1, 30, 80, 4) and certainty.shape == (1, 30, 80)
    assert certainty[0, :, :10].max() == 0  # A -> B from black pixels
    assert certainty[0, :-1, 10:38].min() == 1  # elsewhere certain, except where the target leaves B
    assert certainty[0, 2:, 42:].min() == 1  # B -> A: B has no black pixels
