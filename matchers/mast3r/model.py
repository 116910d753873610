"""MASt3R (naver/mast3r): a CroCo ViT encoder shared by both views, two cross-attending decoders,
and one DPT + local-feature head per view.

For an image pair the network predicts both pointmaps in the first camera's frame, a confidence per
pixel, and dense 24-d local descriptors with their own confidence. The official call is kept::

    pred1, pred2 = model(view1, view2)   # views: {"img": (B,3,H,W) in [-1,1], "true_shape": (B,2)}

and split in two so a pipeline encodes every image once and decodes any number of pairs::

    enc = model.encode(img)               # Encoding(feat, pos, image_size)
    pred1, pred2 = model.decode_pair(enc_a, enc_b)

Parameter names and shapes are the official ones, so the released checkpoint
``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth`` loads strictly. Its layout is
``{'model': state_dict, 'args': Namespace(model=<constructor string>, ...)}``; the constructor string
is parsed (never evaluated) by :func:`parse_constructor` to build the right-sized network.
"""
from __future__ import annotations

import argparse
import ast
import os
from typing import Any, NamedTuple

import torch
from torch import nn

from ..backbones.croco import LAYER_NORM_EPS, Block, DecoderBlock, PatchEmbed, RoPE2D
from ..base import BaseModel
from ..weights import Checkpoint, StateDict, load_file, register_checkpoint, resolve
from .heads import CatMLPDPTHead

INF = float("inf")

CHECKPOINT_NAME = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"

# Defaults of the official classes (CroCoNet / AsymmetricCroCo3DStereo / AsymmetricMASt3R) for
# keyword arguments a constructor string may omit; they differ from our defaults, which describe
# the released checkpoint.
OFFICIAL_CLASS_DEFAULTS: dict[str, Any] = {
    "img_size": (224, 224), "patch_size": 16, "enc_embed_dim": 768, "enc_depth": 12, "enc_num_heads": 12,
    "dec_embed_dim": 512, "dec_depth": 8, "dec_num_heads": 16, "mlp_ratio": 4.0, "pos_embed": "cosine",
    "output_mode": "pts3d", "head_type": "linear", "depth_mode": ("exp", -INF, INF),
    "conf_mode": ("exp", 1, INF), "desc_mode": "norm", "two_confs": False, "desc_conf_mode": None,
    "patch_embed_cls": "PatchEmbedDust3R", "landscape_only": True, "norm_im2_in_dec": True,
}
# training-only constructor arguments without effect on the architecture
TRAINING_ONLY_ARGS = ("freeze", "mask_ratio")


class Encoding(NamedTuple):
    """One batch of encoded images: what the decoder needs, and all the retrieval graph needs.

    ``feat`` (B, N, C) encoder tokens after ``enc_norm``; ``pos`` (B, N, 2) int64 (row, col) of each
    token; ``image_size`` (H, W) of the encoded images, N = (H/16)(W/16).
    """

    feat: torch.Tensor
    pos: torch.Tensor
    image_size: tuple[int, int]

    def to(self, device: torch.device | str) -> "Encoding":
        return Encoding(self.feat.to(device), self.pos.to(device), self.image_size)


class AsymmetricMASt3R(BaseModel):
    """The MASt3R network (official class name and parameter names).

    Options are the official constructor's keyword arguments; the defaults describe the released
    ViT-Large / ViT-Base-decoder 512 checkpoint. ``landscape_only`` and ``patch_embed_cls`` are
    accepted for compatibility: like the official loader (which forces ``landscape_only=False``),
    every image is processed in its own orientation, portrait or landscape.
    """

    kind = "pair_model"
    default_conf = {
        "enc_depth": 24, "dec_depth": 12, "enc_embed_dim": 1024, "dec_embed_dim": 768,
        "enc_num_heads": 16, "dec_num_heads": 12, "mlp_ratio": 4.0, "pos_embed": "RoPE100",
        "img_size": (512, 512), "patch_size": 16, "head_type": "catmlp+dpt", "output_mode": "pts3d+desc24",
        "depth_mode": ("exp", -INF, INF), "conf_mode": ("exp", 1, INF), "desc_mode": "norm",
        "two_confs": True, "desc_conf_mode": ("exp", 0, INF), "patch_embed_cls": "PatchEmbedDust3R",
        "landscape_only": False, "norm_im2_in_dec": True,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        self._check_supported(c)
        self.patch_size = c["patch_size"]
        self.enc_embed_dim, self.dec_embed_dim, self.dec_depth = c["enc_embed_dim"], c["dec_embed_dim"], c["dec_depth"]
        rope = RoPE2D(base=float(c["pos_embed"][len("RoPE"):]))
        # decoder mask token of CroCo pre-training: unused at inference, kept so checkpoints load strictly
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c["dec_embed_dim"]))
        self.patch_embed = PatchEmbed(c["patch_size"], 3, c["enc_embed_dim"])
        self.enc_blocks = nn.ModuleList(
            Block(c["enc_embed_dim"], c["enc_num_heads"], c["mlp_ratio"], rope) for _ in range(c["enc_depth"]))
        self.enc_norm = nn.LayerNorm(c["enc_embed_dim"], eps=LAYER_NORM_EPS)
        self.decoder_embed = nn.Linear(c["enc_embed_dim"], c["dec_embed_dim"])
        self.dec_blocks = self._decoder_blocks(rope)
        self.dec_norm = nn.LayerNorm(c["dec_embed_dim"], eps=LAYER_NORM_EPS)
        self.dec_blocks2 = self._decoder_blocks(rope)
        desc_conf_mode = tuple(c["desc_conf_mode"]) if c["desc_conf_mode"] is not None else tuple(c["conf_mode"])
        head = dict(enc_dim=c["enc_embed_dim"], dec_dim=c["dec_embed_dim"], dec_depth=c["dec_depth"],
                    patch_size=c["patch_size"], desc_dim=int(c["output_mode"][len("pts3d+desc"):]),
                    depth_mode=tuple(c["depth_mode"]), conf_mode=tuple(c["conf_mode"]),
                    desc_conf_mode=desc_conf_mode, two_confs=c["two_confs"])
        self.downstream_head1 = CatMLPDPTHead(**head)
        self.downstream_head2 = CatMLPDPTHead(**head)

    @staticmethod
    def _check_supported(c: dict[str, Any]) -> None:
        problems = []
        if c["head_type"] != "catmlp+dpt" or not c["output_mode"].startswith("pts3d+desc"):
            problems.append(f"head_type={c['head_type']!r} output_mode={c['output_mode']!r} "
                            "(only 'catmlp+dpt' with 'pts3d+desc<D>' is implemented)")
        if not c["pos_embed"].startswith("RoPE"):
            problems.append(f"pos_embed={c['pos_embed']!r} (only RoPE<base> is implemented)")
        if c["patch_embed_cls"] not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            problems.append(f"patch_embed_cls={c['patch_embed_cls']!r}")
        if c["desc_mode"] != "norm":
            problems.append(f"desc_mode={c['desc_mode']!r}")
        if not c["norm_im2_in_dec"]:
            problems.append("norm_im2_in_dec=False")
        if c["conf_mode"] is None:
            problems.append("conf_mode=None")
        if problems:
            raise ValueError("unsupported MASt3R configuration: " + "; ".join(problems))

    def _decoder_blocks(self, rope: RoPE2D) -> nn.ModuleList:
        c = self.conf
        return nn.ModuleList(
            DecoderBlock(c["dec_embed_dim"], c["dec_num_heads"], c["mlp_ratio"], rope) for _ in range(c["dec_depth"]))

    def encode(self, img: torch.Tensor, true_shape: torch.Tensor | None = None) -> Encoding:
        """Encode images (B, 3, H, W) in [-1, 1], H and W multiples of 16, portrait or landscape.

        ``true_shape`` (B, 2) = (H, W), as in the official views, is checked against the image.
        """
        H, W = img.shape[-2:]
        if true_shape is not None and not bool((torch.as_tensor(true_shape).cpu() == torch.tensor([H, W])).all()):
            raise ValueError(f"true_shape {true_shape.tolist()} does not match the image size {(H, W)}")
        x, pos = self.patch_embed(img)
        for block in self.enc_blocks:
            x = block(x, pos)
        return Encoding(self.enc_norm(x), pos, (int(H), int(W)))

    def decode(self, enc1: Encoding, enc2: Encoding) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run both decoders. Returns, per view, [encoder tokens, block 1, ..., dec_norm(block L)]."""
        f1, f2 = self.decoder_embed(enc1.feat), self.decoder_embed(enc2.feat)
        out1, out2 = [enc1.feat], [enc2.feat]
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            f1, f2 = blk1(f1, f2, enc1.pos, enc2.pos), blk2(f2, f1, enc2.pos, enc1.pos)
            out1.append(f1)
            out2.append(f2)
        out1[-1], out2[-1] = self.dec_norm(f1), self.dec_norm(f2)
        return out1, out2

    def decode_pair(self, enc1: Encoding, enc2: Encoding) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Predictions for the pair (view 1 = reference frame), from cached encodings.

        ``pred1``: ``pts3d`` (B,H1,W1,3), ``conf``, ``desc`` (B,H1,W1,D), ``desc_conf``;
        ``pred2``: ``pts3d_in_other_view`` (B,H2,W2,3) (view 2's points in view 1's frame), ``conf``,
        ``desc``, ``desc_conf``. Heads run in float32 even under autocast, as officially.
        """
        dec1, dec2 = self.decode(enc1, enc2)
        with torch.autocast(enc1.feat.device.type, enabled=False):
            pred1 = self.downstream_head1([t.float() for t in dec1], enc1.image_size)
            pred2 = self.downstream_head2([t.float() for t in dec2], enc2.image_size)
        pred2["pts3d_in_other_view"] = pred2.pop("pts3d")
        return pred1, pred2

    def forward(self, view1: dict[str, Any], view2: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The official call: views hold ``img`` (B,3,H,W) in [-1,1] and optionally ``true_shape`` (B,2)."""
        img1, img2 = view1["img"], view2["img"]
        shape1, shape2 = view1.get("true_shape"), view2.get("true_shape")
        if img1.shape == img2.shape:  # one encoder batch for both views, as officially
            shapes = None if shape1 is None or shape2 is None else torch.cat(
                (torch.as_tensor(shape1), torch.as_tensor(shape2)))
            enc = self.encode(torch.cat((img1, img2)), shapes)
            B = img1.shape[0]
            enc1 = Encoding(enc.feat[:B], enc.pos[:B], enc.image_size)
            enc2 = Encoding(enc.feat[B:], enc.pos[B:], enc.image_size)
        else:
            enc1, enc2 = self.encode(img1, shape1), self.encode(img2, shape2)
        return self.decode_pair(enc1, enc2)


# ----------------------------------------------------------------------------------------------
# official checkpoint: {'model': state_dict, 'args': Namespace(model="AsymmetricMASt3R(...)")}
# ----------------------------------------------------------------------------------------------

def _literal(node: ast.AST) -> Any:
    """Value of a literal constructor argument: numbers, strings, tuples/lists, +-inf."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id == "inf":
        return INF
    raise ValueError(f"not a literal constructor argument: {ast.unparse(node)}")


def parse_constructor(text: str) -> dict[str, Any]:
    """Keyword arguments of an official constructor string, without evaluating it.

    ``"AsymmetricMASt3R(enc_depth=24, ..., depth_mode=('exp', -inf, inf), ...)"`` ->
    ``{"enc_depth": 24, ..., "depth_mode": ("exp", -inf, inf)}``, with the official loader's
    rewrite (``ManyAR_PatchEmbed`` -> ``PatchEmbedDust3R``) applied; arguments the string omits take
    the official class defaults; training-only arguments are dropped.
    """
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise ValueError(f"cannot parse the checkpoint's constructor string {text!r}: {error}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "AsymmetricMASt3R"):
        raise ValueError(f"expected 'AsymmetricMASt3R(...)' in the checkpoint, got {text[:80]!r}")
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError(f"only keyword arguments are supported in {text[:80]!r}")
    kwargs = {kw.arg: _literal(kw.value) for kw in call.keywords}
    kwargs = {**OFFICIAL_CLASS_DEFAULTS, **kwargs}
    for key in TRAINING_ONLY_ARGS:
        kwargs.pop(key, None)
    if kwargs["patch_embed_cls"] == "ManyAR_PatchEmbed":
        kwargs["patch_embed_cls"] = "PatchEmbedDust3R"
    kwargs["landscape_only"] = False  # what the official loader forces
    if isinstance(kwargs["img_size"], int):
        kwargs["img_size"] = (kwargs["img_size"], kwargs["img_size"])
    return kwargs


def constructor_string(raw: Any) -> str:
    """``args.model`` of a checkpoint whose ``args`` is a Namespace (official) or a plain dict."""
    args = raw.get("args") if isinstance(raw, dict) else None
    text = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    if not isinstance(text, str):
        raise ValueError("not an official MASt3R checkpoint: expected {'model': state_dict, 'args': {model: str}}")
    return text


def _alias_pairs(keys: list[str]) -> dict[str, str]:
    """DPT alias names: ``...scratch.layer{N}_rn.weight`` <-> ``...scratch.layer_rn.{N-1}.weight``."""
    pairs = {}
    for key in keys:
        for n in range(1, 5):
            a, b = f"scratch.layer{n}_rn.weight", f"scratch.layer_rn.{n - 1}.weight"
            if key.endswith(a):
                pairs[key[: -len(a)] + b] = key
            elif key.endswith(b):
                pairs[key[: -len(b)] + a] = key
    return pairs


def state_dict_from_checkpoint(raw: Any) -> StateDict:
    """The flat state dict of an official checkpoint (``raw['model']``, or a flat dict).

    Exports that keep only one name of each aliased DPT tensor (safetensors / HF hub) get the other
    name filled in, so strict loading works for both layouts.
    """
    state = raw["model"] if isinstance(raw, dict) and isinstance(raw.get("model"), dict) else raw
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("not a MASt3R checkpoint: no state dict of tensors found")
    state = dict(state)
    for missing, present in _alias_pairs(list(state)).items():
        state.setdefault(missing, state[present])
    return state


def model_from_checkpoint(weights: str | os.PathLike, **conf: Any) -> AsymmetricMASt3R:
    """Build the network a checkpoint describes and load it strictly (``matchers.load`` builder).

    ``weights``: a registered checkpoint name or a path to an official ``.pth``. The file is read
    with ``weights_only=True``, allowing only ``argparse.Namespace`` besides tensors. ``conf``
    overrides constructor arguments (they must still match the weights). The network is created on
    the meta device and takes the checkpoint's tensors, so no memory is spent on a random init.
    """
    path = resolve(weights)
    raw = load_file(path, allowlist=(argparse.Namespace,))
    kwargs = {**parse_constructor(constructor_string(raw)), **conf}
    with torch.device("meta"):
        model = AsymmetricMASt3R(**kwargs)
    state = {k: v.contiguous() for k, v in state_dict_from_checkpoint(raw).items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


register_checkpoint(Checkpoint(
    name=CHECKPOINT_NAME,
    url=f"https://download.europe.naverlabs.com/ComputerVision/MASt3R/{CHECKPOINT_NAME}.pth",
    filename=f"{CHECKPOINT_NAME}.pth",
    license="CC BY-NC-SA 4.0 (non-commercial; see naver/mast3r CHECKPOINTS_NOTICE)",
    extract=state_dict_from_checkpoint,
    notes="MASt3R ViT-L encoder, ViT-B decoder, CatMLP+DPT head, trained at 512 px (2.7 GB).",
    allowlist=(argparse.Namespace,),
))
