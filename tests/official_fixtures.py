"""Checkpoints laid out as the official DAFormer / HRDA / PiPa code saves them.

The key names and shapes are written out here from the official module trees
(mmseg's ``mix_transformer.py``, ``daformer_head.py``, ``hrda_head.py``, PiPa's
``hrda_encoder_decoder.py`` / ``projection.py``), independently of
``pipa_core.models.official``, so the tests check the loader against the
official layout rather than against itself. mmcv's ``save_checkpoint`` writes
``{"meta", "state_dict", "optimizer"}``; the UDA wrapper's state dict holds the
student (``model.``), the EMA teacher (``ema_model.``) and the ImageNet copy
(``imnet_model.``), and PiPa adds top-level ``project.*`` / ``classifier.*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import torch

from pipa_core.models.mit import MIT_CONFIGS

Shapes = Dict[str, Tuple[int, ...]]


def _bn(prefix: str, c: int) -> Shapes:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def mit_shapes(name: str) -> Shapes:
    """``backbone.*`` of the official ``mix_transformer.py`` (mit_b0 ... mit_b5)."""
    cfg = MIT_CONFIGS[name]
    out: Shapes = {}
    for s in range(1, 5):
        c, depth, r = cfg.embed_dims[s - 1], cfg.depths[s - 1], cfg.sr_ratios[s - 1]
        c_in, k = (3, 7) if s == 1 else (cfg.embed_dims[s - 2], 3)
        p = f"backbone.patch_embed{s}"
        out[f"{p}.proj.weight"], out[f"{p}.proj.bias"] = (c, c_in, k, k), (c,)
        out[f"{p}.norm.weight"], out[f"{p}.norm.bias"] = (c,), (c,)
        h = c * cfg.mlp_ratios[s - 1]
        for i in range(depth):
            b = f"backbone.block{s}.{i}"
            layers = {
                "norm1": [(c,), (c,)],
                "attn.q": [(c, c), (c,)],
                "attn.kv": [(2 * c, c), (2 * c,)],
                "attn.proj": [(c, c), (c,)],
                "norm2": [(c,), (c,)],
                "mlp.fc1": [(h, c), (h,)],
                "mlp.dwconv.dwconv": [(h, 1, 3, 3), (h,)],
                "mlp.fc2": [(c, h), (c,)],
            }
            if r > 1:
                layers["attn.sr"] = [(c, c, r, r), (c,)]
                layers["attn.norm"] = [(c,), (c,)]
            for layer, (w, bias) in layers.items():
                out[f"{b}.{layer}.weight"], out[f"{b}.{layer}.bias"] = w, bias
        out[f"backbone.norm{s}.weight"], out[f"backbone.norm{s}.bias"] = (c,), (c,)
    return out


def daformer_head_shapes(
    prefix: str, in_channels, embed: int = 256, channels: int = 256, k: int = 19
) -> Shapes:
    """``DAFormerHead`` with the ``daformer_sepaspp`` config: MLP (nn.Linear) embeddings,
    ASPP over dilations 1, 6, 12, 18 (depthwise-separable for d > 1), 3x3 bottleneck."""
    out: Shapes = {}
    for i, c in enumerate(in_channels):
        out[f"{prefix}embed_layers.{i}.proj.weight"] = (embed, c)
        out[f"{prefix}embed_layers.{i}.proj.bias"] = (embed,)
    cat = embed * len(in_channels)
    f = f"{prefix}fuse_layer."
    out[f"{f}aspp_modules.0.conv.weight"] = (channels, cat, 1, 1)
    out.update(_bn(f"{f}aspp_modules.0.bn", channels))
    for j in (1, 2, 3):
        m = f"{f}aspp_modules.{j}"
        out[f"{m}.depthwise_conv.conv.weight"] = (cat, 1, 3, 3)
        out.update(_bn(f"{m}.depthwise_conv.bn", cat))
        out[f"{m}.pointwise_conv.conv.weight"] = (channels, cat, 1, 1)
        out.update(_bn(f"{m}.pointwise_conv.bn", channels))
    out[f"{f}bottleneck.conv.weight"] = (channels, 4 * channels, 3, 3)
    out.update(_bn(f"{f}bottleneck.bn", channels))
    out[f"{prefix}conv_seg.weight"] = (k, channels, 1, 1)
    out[f"{prefix}conv_seg.bias"] = (k,)
    return out


def hrda_head_shapes(in_channels, k: int = 19) -> Shapes:
    """``HRDAHead``: ``decode_head.head`` (a DAFormer head, its own ``conv_seg``) and
    ``decode_head.scale_attention`` (DAFormer head with a 1x1 ConvModule fusion)."""
    out = daformer_head_shapes("decode_head.head.", in_channels, k=k)
    a = "decode_head.scale_attention."
    for i, c in enumerate(in_channels):
        out[f"{a}embed_layers.{i}.proj.weight"] = (256, c)
        out[f"{a}embed_layers.{i}.proj.bias"] = (256,)
    out[f"{a}fuse_layer.conv.weight"] = (256, 256 * len(in_channels), 1, 1)
    out.update(_bn(f"{a}fuse_layer.bn", 256))
    out[f"{a}conv_seg.weight"], out[f"{a}conv_seg.bias"] = (k, 256, 1, 1), (k,)
    return out


def pipa_segmentor_extras(in_channels, k: int = 19) -> Shapes:
    """PiPa's ``cls_head`` and ``proj_head.proj`` on the concatenated stages."""
    c = sum(in_channels)
    out: Shapes = {"cls_head.0.weight": (c, c, 3, 3), "cls_head.0.bias": (c,)}
    out.update(_bn("cls_head.1.0", c))
    out["cls_head.3.weight"] = (k, c, 1, 1)
    out["proj_head.proj.0.weight"], out["proj_head.proj.0.bias"] = (c, c, 1, 1), (c,)
    out.update(_bn("proj_head.proj.1.0", c))
    out["proj_head.proj.2.weight"], out["proj_head.proj.2.bias"] = (256, c, 1, 1), (256,)
    return out


PIPA_TOP_LEVEL: Shapes = {
    "project.0.weight": (19, 19, 1, 1),
    "project.0.bias": (19,),
    "project.2.weight": (128, 19, 1, 1),
    "project.2.bias": (128,),
    "classifier.weight": (19, 19, 1, 1),
    "classifier.bias": (19,),
}


def segmentor_shapes(kind: str, encoder: str = "mit_b0") -> Shapes:
    """One segmentor's keys: ``kind`` in ``daformer``, ``hrda``, ``pipa_hrda``, ``pipa_daformer``."""
    chans = MIT_CONFIGS[encoder].embed_dims
    out = mit_shapes(encoder)
    if kind in ("hrda", "pipa_hrda"):
        out.update(hrda_head_shapes(chans))
    else:
        out.update(daformer_head_shapes("decode_head.", chans))
    if kind.startswith("pipa"):
        out.update(pipa_segmentor_extras(chans))
    return out


def _random(shape, name: str, gen: torch.Generator) -> torch.Tensor:
    if name.endswith("num_batches_tracked"):
        return torch.tensor(40000, dtype=torch.int64)
    if name.endswith("running_var"):
        return torch.rand(shape, generator=gen) + 0.5
    return torch.randn(shape, generator=gen) * 0.05


def make_state_dict(kind: str, encoder: str = "mit_b0", seed: int = 0) -> Dict[str, torch.Tensor]:
    """The UDA wrapper's state dict: three segmentors with different random tensors."""
    gen = torch.Generator().manual_seed(seed)
    shapes = segmentor_shapes(kind, encoder)
    sd = {}
    for prefix in ("model.", "ema_model.", "imnet_model."):
        for name, shape in shapes.items():
            sd[prefix + name] = _random(shape, name, gen)
    if kind.startswith("pipa"):
        for name, shape in PIPA_TOP_LEVEL.items():
            sd[name] = _random(shape, name, gen)
    return sd


def make_meta(kind: str, iteration: int = 40000) -> dict:
    config = {"daformer": "dacs", "hrda": "hrda", "pipa_hrda": "pipa", "pipa_daformer": "pipa"}
    return {
        "env_info": "sys.platform: linux\nPython: 3.8.5\nPyTorch: 1.7.1",
        "seed": 0,
        "exp_name": f"{kind}.py",
        "mmseg_version": "0.16.0+unknown",
        "config": f"uda = dict(type='DACS', alpha=0.999)\nname = '{config[kind]}'\n",
        "CLASSES": ("road", "sidewalk", "building"),
        "PALETTE": [[128, 64, 128], [244, 35, 232], [70, 70, 70]],
        "mmcv_version": "1.3.7",
        "time": "Tue Jun  7 10:00:00 2022",
        "epoch": 1,
        "iter": iteration,
    }


def make_optimizer(sd: Dict[str, torch.Tensor], n: int = 3) -> dict:
    """AdamW state of the first ``n`` student tensors, as ``optimizer.state_dict()`` holds it."""
    student = [v for k, v in sd.items() if k.startswith("model.") and v.is_floating_point()][:n]
    state = {
        i: {"step": torch.tensor(40000.0), "exp_avg": torch.zeros_like(v), "exp_avg_sq": v.abs()}
        for i, v in enumerate(student)
    }
    group = {"lr": 6e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
    return {"state": state, "param_groups": [{**group, "amsgrad": False, "params": list(state)}]}


def write_released(path: Path, kind: str, encoder: str = "mit_b0", seed: int = 0, meta=None):
    """Write a released-layout checkpoint (meta + state_dict + optimizer) to ``path``."""
    sd = make_state_dict(kind, encoder, seed)
    obj = {"meta": meta if meta is not None else make_meta(kind), "state_dict": sd}
    obj["optimizer"] = make_optimizer(sd)
    torch.save(obj, path)
    return sd
