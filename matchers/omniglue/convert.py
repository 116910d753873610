"""Convert the official OmniGlue TensorFlow SavedModels to one PyTorch checkpoint.

Usage::

    python -m matchers.omniglue.convert og_export/ sp_v6/ omniglue_from_tf.pth
    python -m matchers.omniglue.convert --print-mapping      # the 317 + 72 rows below, in full

TensorFlow is needed only here (the ``omniglue-convert`` extra of pyproject.toml,
``tensorflow-cpu``); it is imported inside :func:`read_tf_variables`. The output is
``{"matcher": state_dict, "superpoint": state_dict}``: ``matcher`` loads strictly into
:class:`~matchers.omniglue.model.OmniGlue`, ``superpoint`` into
:class:`~matchers.superpoint_v6.SuperPointV6` (rpautrat's key names). DINOv2 is not converted:
OmniGlue loads the official PyTorch ``dinov2_vitb14_pretrain.pth``.

``og_export`` variables are anonymous (``model/variables/{i}/.ATTRIBUTES/VARIABLE_VALUE``), so
the mapping below is inferred from their shapes and order (``fixtures/manifests/
omniglue_og_export_tf.json``); every row is a Keras variable, Dense kernels are stored (in, out)
and transposed to torch's (out, in)::

    i = 0..23      keypoint encoder block b = i // 6 (3->32->64->128->256), in order:
                   Dense kernel, Dense bias, BN gamma, BN beta, BN moving_mean, BN moving_variance
                   -> keypoint_encoder.linears.{b}.{weight,bias}, keypoint_encoder.norms.{b}.{weight,
                      bias,running_mean,running_var}
    i = 24, 25     keypoint encoder last Dense 256->256 -> keypoint_encoder.linears.4.{weight,bias}
    i = 26 + 14 l + (0..13), layer l = 0..17 (even: self, odd: cross):
                   q kernel, q bias, k kernel, k bias, v kernel, v bias, merge kernel, merge bias,
                   MLP Dense 512->512 kernel, bias, BN gamma, BN beta, MLP Dense 512->256 kernel, bias
                   -> layers.{l}.{query,key,value,merge,mlp_in}.{weight,bias},
                      layers.{l}.mlp_norm.{weight,bias}, layers.{l}.mlp_out.{weight,bias}
    i = 278 + 2 l, 279 + 2 l: layer l's BN moving_mean, moving_variance (Keras lists the
                   non-trainable variables of these layers after all trainable ones)
                   -> layers.{l}.mlp_norm.{running_mean,running_var}
    i = 314, 315   final projection Dense 256->256 -> final_proj.{weight,bias}
    i = 316        scalar dustbin score -> bin_score

Shapes pin the block boundaries (6 + 6 + 6 + 6 + 2, then 18 x 14, 36 x 512, 2, 1 = 317). Not
pinned by shapes, and inferred: q/k/v/merge order inside a layer (all 256 x 256), gamma before
beta and mean before variance (Keras order), the layer-major order of 278..313.

sp_v6 variables are named; the rule is that of rpautrat's ``convert_to_pytorch.ipynb``
(:func:`matchers.superpoint_v6.tf_name_to_torch`), conv kernels HWIO -> OIHW.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..superpoint_v6 import tf_name_to_torch

NUM_LAYERS = 18
NUM_OG_VARIABLES = 26 + 14 * NUM_LAYERS + 2 * NUM_LAYERS + 3  # 317
LAYER_FIELDS = ("query.weight", "query.bias", "key.weight", "key.bias", "value.weight", "value.bias",
                "merge.weight", "merge.bias", "mlp_in.weight", "mlp_in.bias", "mlp_norm.weight",
                "mlp_norm.bias", "mlp_out.weight", "mlp_out.bias")
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def og_name(index: int) -> str:
    """The SavedModel checkpoint key of variable ``index``."""
    return f"model/variables/{index}/.ATTRIBUTES/VARIABLE_VALUE"


def og_mapping(num_layers: int = NUM_LAYERS) -> list[tuple[str, str, str]]:
    """Every og_export variable as ``(tf_name, torch_key, transform)``, transform ``"transpose"``
    (Dense kernel) or ``"none"``, in variable order."""
    rows: list[tuple[int, str]] = []
    for block in range(4):
        rows.append((6 * block, f"keypoint_encoder.linears.{block}.weight"))
        rows.append((6 * block + 1, f"keypoint_encoder.linears.{block}.bias"))
        rows += [(6 * block + 2 + j, f"keypoint_encoder.norms.{block}.{f}") for j, f in enumerate(BN_FIELDS)]
    rows += [(24, "keypoint_encoder.linears.4.weight"), (25, "keypoint_encoder.linears.4.bias")]
    stats = 26 + 14 * num_layers
    for layer in range(num_layers):
        rows += [(26 + 14 * layer + j, f"layers.{layer}.{f}") for j, f in enumerate(LAYER_FIELDS)]
        rows += [(stats + 2 * layer, f"layers.{layer}.mlp_norm.running_mean"),
                 (stats + 2 * layer + 1, f"layers.{layer}.mlp_norm.running_var")]
    end = stats + 2 * num_layers
    rows += [(end, "final_proj.weight"), (end + 1, "final_proj.bias"), (end + 2, "bin_score")]
    rows.sort()
    def is_dense_kernel(key: str) -> bool:
        return key.endswith(".weight") and ".norms." not in key and ".mlp_norm." not in key

    return [(og_name(i), key, "transpose" if is_dense_kernel(key) else "none") for i, key in rows]


def _check_names(given: Mapping[str, np.ndarray], expected: list[str], what: str) -> None:
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        raise KeyError(f"{what}: {len(missing)} variables missing (first: {missing[:3]}), "
                       f"{len(extra)} unexpected (first: {extra[:3]})")


def convert_og(variables: Mapping[str, np.ndarray], num_layers: int = NUM_LAYERS) -> dict[str, torch.Tensor]:
    """og_export variables (``{tf_name: array}``, all of them, nothing else) -> the matcher's state dict."""
    mapping = og_mapping(num_layers)
    _check_names(variables, [name for name, _, _ in mapping], "og_export")
    state = {}
    for name, key, transform in mapping:
        value = np.asarray(variables[name], dtype=np.float32)
        state[key] = torch.from_numpy(np.array(value.T if transform == "transpose" else value, order="C"))
    return state


def superpoint_mapping(names: list[str]) -> list[tuple[str, str, str]]:
    """sp_v6 variables as ``(tf_name, torch_key, transform)``; kernels are ``"hwio_to_oihw"``."""
    return [(name, tf_name_to_torch(name), "hwio_to_oihw" if name.endswith("/kernel") else "none")
            for name in sorted(names)]


def convert_superpoint(variables: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """sp_v6 variables (``superpoint/...``) -> rpautrat's PyTorch state dict."""
    state = {}
    for name, key, transform in superpoint_mapping(list(variables)):
        value = np.asarray(variables[name], dtype=np.float32)
        if transform == "hwio_to_oihw":
            value = value.transpose(3, 2, 0, 1)
        if key in state:
            raise KeyError(f"two sp_v6 variables map to '{key}'")
        state[key] = torch.from_numpy(np.array(value, order="C"))
    return state


def read_tf_variables(saved_model: str | Path, prefix: str) -> dict[str, np.ndarray]:
    """Variables of a SavedModel folder whose names start with ``prefix`` (needs tensorflow)."""
    try:
        import tensorflow as tf  # noqa: PLC0415  (optional, conversion only)
    except ImportError as error:
        raise ImportError("converting the official OmniGlue SavedModels needs tensorflow (the "
                          "omniglue-convert extra: pip install tensorflow-cpu); running OmniGlue does not") from error
    checkpoint = Path(saved_model) / "variables" / "variables"
    if not Path(str(checkpoint) + ".index").is_file():
        raise FileNotFoundError(f"{saved_model} is not a SavedModel folder (no variables/variables.index)")
    reader = tf.train.load_checkpoint(str(checkpoint))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name.startswith(prefix)}


def mapping_lines() -> list[str]:
    """The full mapping, one ``tf_name -> torch_key (transform)`` line per variable."""
    from ..superpoint_v6 import SuperPointV6  # noqa: PLC0415
    tf_leaf = {"weight": ("kernel", "gamma"), "bias": ("bias", "beta"), "running_mean": ("moving_mean",),
               "running_var": ("moving_variance",)}
    sp_names = []
    for key in SuperPointV6().state_dict():
        if key.endswith("num_batches_tracked"):
            continue
        prefix, op, leaf = key.rsplit(".", 2)
        parts = prefix.split(".")
        layer = (f"vgg/conv{int(parts[1]) + 1}_{int(parts[2]) + 1}" if parts[0] == "backbone"
                 else f"{parts[0]}/conv{int(parts[1]) + 1}")
        sp_names.append(f"superpoint/{layer}/{op}/{tf_leaf[leaf][0 if op == 'conv' else -1]}")
    rows = og_mapping() + superpoint_mapping(sp_names)
    return [f"{name} -> {key} ({transform})" for name, key, transform in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("og_export", nargs="?", type=Path, help="OmniGlue SavedModel folder (og_export/)")
    parser.add_argument("sp_v6", nargs="?", type=Path, help="SuperPoint SavedModel folder (sp_v6/)")
    parser.add_argument("output", nargs="?", type=Path, help="PyTorch checkpoint to write")
    parser.add_argument("--print-mapping", action="store_true", help="print the variable mapping and exit")
    args = parser.parse_args(argv)
    if args.print_mapping:
        print("\n".join(mapping_lines()))
        return 0
    if args.output is None:
        parser.error("og_export, sp_v6 and output are required")
    try:
        state = {"matcher": convert_og(read_tf_variables(args.og_export, "model/variables/")),
                 "superpoint": convert_superpoint(read_tf_variables(args.sp_v6, "superpoint/"))}
    except (ImportError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.name + ".partial")
    torch.save(state, partial)
    partial.replace(args.output)
    print(f"wrote {args.output}: {len(state['matcher'])} matcher and {len(state['superpoint'])} SuperPoint tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
