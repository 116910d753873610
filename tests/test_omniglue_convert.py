"""OmniGlue converter: the official TF variable inventories (manifests decoded from the
SavedModels' ``variables.index``) with synthetic values, converted and loaded strictly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matchers.omniglue.convert import NUM_OG_VARIABLES, convert_og, convert_superpoint, mapping_lines, og_mapping
from matchers.omniglue.model import OmniGlue
from matchers.superpoint_v6 import SuperPointV6
from conftest import shared_path


def manifest(name: str) -> dict:
    return json.loads(shared_path("fixtures", "manifests", f"{name}.json").read_text())


def synthetic_variables(entries: dict[str, dict]) -> dict[str, np.ndarray]:
    """Every element of every variable gets a distinct value (a global running index), so a value
    found in a torch tensor identifies the variable and the position it came from."""
    variables, start = {}, 0
    for name, entry in entries.items():
        count = int(np.prod(entry["shape"], dtype=np.int64))
        values = np.arange(start, start + count, dtype=np.float64) / 8  # exact in float32 below 2**21
        variables[name] = values.astype(np.float32).reshape(entry["shape"])
        start += count
    return variables


def test_og_export_round_trip_every_variable_in_exactly_one_parameter():
    entries = {k: v for k, v in manifest("omniglue_og_export_tf")["variables"].items() if k.startswith("model/")}
    assert len(entries) == NUM_OG_VARIABLES == 317
    variables = synthetic_variables(entries)
    state = convert_og(variables)
    rows = og_mapping()
    # one row per variable, torch keys unique: a bijection between variables and tensors
    assert sorted(name for name, _, _ in rows) == sorted(entries)
    assert len({key for _, key, _ in rows}) == len(rows) == len(state)
    for name, key, transform in rows:
        expected = variables[name].T if transform == "transpose" else variables[name]
        assert tuple(state[key].shape) == expected.shape, key
        np.testing.assert_array_equal(state[key].numpy(), expected, err_msg=f"{name} -> {key}")
    # no element lost or duplicated: the multiset of values is the original one
    converted = np.sort(np.concatenate([t.numpy().ravel() for t in state.values()]))
    original = np.sort(np.concatenate([v.ravel() for v in variables.values()]))
    np.testing.assert_array_equal(converted, original)
    # and the checkpoint is exactly our module's state (BatchNorm fills num_batches_tracked)
    model = OmniGlue()
    model.load_state_dict(state, strict=True)
    expected_keys = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(state) == expected_keys
    assert model.bin_score.item() == pytest.approx(float(variables[rows[-1][0]]))


def test_og_export_dense_kernels_are_transposed_to_torch_layout():
    entries = {k: v for k, v in manifest("omniglue_og_export_tf")["variables"].items() if k.startswith("model/")}
    variables = synthetic_variables(entries)
    model = OmniGlue()
    model.load_state_dict(convert_og(variables), strict=True)
    x = torch.randn(5, 3)
    kernel, bias = variables[og_mapping()[0][0]], variables[og_mapping()[1][0]]  # first Dense 3 -> 32
    torch.testing.assert_close(model.keypoint_encoder.linears[0](x),
                               x @ torch.from_numpy(kernel) + torch.from_numpy(bias))


def test_og_export_conversion_rejects_an_incomplete_variable_set():
    entries = {k: v for k, v in manifest("omniglue_og_export_tf")["variables"].items() if k.startswith("model/")}
    variables = synthetic_variables(entries)
    variables.pop(next(iter(variables)))
    with pytest.raises(KeyError, match="1 variables missing"):
        convert_og(variables)


def test_sp_v6_round_trip_matches_rpautrat_names_and_layout():
    entries = manifest("superpoint_sp_v6_tf")["variables"]
    torch_manifest = manifest("superpoint_rpautrat_pytorch")["state_dict"]
    variables = synthetic_variables(entries)
    state = convert_superpoint(variables)
    assert len(state) == len(entries) == 72
    for name, entry in entries.items():
        key = entry["rpautrat_torch_key"]
        value = variables[name].transpose(3, 2, 0, 1) if name.endswith("/kernel") else variables[name]
        np.testing.assert_array_equal(state[key].numpy(), value, err_msg=name)
        assert list(state[key].shape) == entry["torch_shape"] == torch_manifest[key]["shape"]
    assert set(state) == {k for k in torch_manifest if not k.endswith("num_batches_tracked")}
    SuperPointV6().load_state_dict(state, strict=True)


def test_superpoint_v6_state_dict_is_rpautrat_manifest():
    torch_manifest = manifest("superpoint_rpautrat_pytorch")["state_dict"]
    with torch.device("meta"):
        state = SuperPointV6().state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in torch_manifest.items()}


def test_printed_mapping_lists_every_variable_once():
    lines = mapping_lines()
    assert len(lines) == 317 + 72
    torch_keys = [line.split(" -> ")[1].split(" ")[0] for line in lines]
    assert len(set(torch_keys[:317])) == 317 and len(set(torch_keys[317:])) == 72
    sp_names = {line.split(" -> ")[0] for line in lines[317:]}
    assert sp_names == set(manifest("superpoint_sp_v6_tf")["variables"])


def test_converter_output_loads_through_the_registry(tmp_path):
    """The file ``convert.main`` writes ({"matcher", "superpoint"}) loads by path with
    ``matchers.load`` for the matcher and the sp_v6 detector (DINOv2 comes from its own file)."""
    import matchers

    og = synthetic_variables({k: v for k, v in manifest("omniglue_og_export_tf")["variables"].items()
                              if k.startswith("model/")})
    sp = synthetic_variables(manifest("superpoint_sp_v6_tf")["variables"])
    path = tmp_path / "omniglue_from_tf.pth"
    torch.save({"matcher": convert_og(og), "superpoint": convert_superpoint(sp)}, path)
    matcher = matchers.load("omniglue", weights=path)
    np.testing.assert_array_equal(matcher.final_proj.bias.detach().numpy(), og[og_mapping()[-2][0]])
    detector = matchers.load("superpoint_v6", weights=path)
    np.testing.assert_array_equal(detector.detector[1].bn.running_var.numpy(),
                                  sp["superpoint/detector/conv2/bn/moving_variance"])


def test_committed_mapping_table_is_the_converters():
    from pathlib import Path

    table = Path(__file__).parents[1] / "matchers" / "omniglue" / "MAPPING.txt"
    rows = [line for line in table.read_text().splitlines() if not line.startswith("#")]
    assert rows == mapping_lines()
