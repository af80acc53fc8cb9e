"""Loading pretrained weights: official SegFormer, Hugging Face and timm/torchvision formats.

Supported files (the format is detected from the key names):

* ``mit_official``: the SegFormer ImageNet release ``mit_b0.pth`` ... ``mit_b5.pth``
  (keys ``patch_embed1.proj.weight``, ``block1.0.attn.kv.weight``, ``norm1.weight``,
  ``head.weight``; possibly wrapped in ``{"state_dict": ...}`` or prefixed ``backbone.``).
* ``mit_hf``: Hugging Face ``nvidia/mit-b*`` (``pytorch_model.bin`` or
  ``model.safetensors``; keys ``segformer.encoder.patch_embeddings.0.proj.weight``,
  ``segformer.encoder.block.0.0.attention.self.query.weight`` / ``key`` / ``value``...).
  Separate key and value projections are concatenated into our ``kv``.
* ``timm_resnet``: timm or torchvision ImageNet ResNets (``conv1.weight``,
  ``layer1.0.conv1.weight``, ``fc.weight``).
* ``pipa_segmentor``: files written by :meth:`Segmentor.export_weights`.

``"imagenet"`` instead of a path downloads the weights from the Hugging Face hub
(or reuses its local cache); without network this fails with a message saying
which file to download and where to pass it. Every file is read with
``torch.load(..., weights_only=True)`` (or ``safetensors``).
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from pipa_core.models.deeplabv2 import ResNetEncoder
from pipa_core.models.dinov2 import DINOv2Encoder
from pipa_core.models.mit import MIT_CONFIGS, MixVisionTransformer

__all__ = [
    "HF_MIT_REPOS",
    "LoadReport",
    "PretrainedLoadError",
    "detect_format",
    "hf_to_official",
    "load_encoder_weights",
    "load_pretrained",
    "load_segmentor_weights",
    "official_to_hf",
    "read_state_dict",
]

log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

#: Hugging Face hub repositories of the ImageNet-1k MiT encoders.
HF_MIT_REPOS = {f"mit_b{i}": f"nvidia/mit-b{i}" for i in range(6)}
_OFFICIAL_URL = (
    "https://github.com/NVlabs/SegFormer#training (ImageNet-1k weights mit_b0.pth ... mit_b5.pth)"
)


class PretrainedLoadError(ValueError):
    """A weights file cannot be used: unreadable, unknown format or wrong architecture."""


@dataclass
class LoadReport:
    """What happened when loading weights into a model.

    Attributes:
        path: the file read.
        format: detected format (``mit_official``, ``mit_hf``, ``timm_resnet``, ``pipa_segmentor``).
        loaded: number of tensors copied into the model.
        missing: model keys the file did not provide (left at their initialisation).
        unexpected: file keys the model has no place for.
        ignored: file keys dropped on purpose (ImageNet classifier ``head`` / ``fc``).
        expected_missing: model keys that are never in such files (projection heads).
    """

    path: str
    format: str
    loaded: int = 0
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    expected_missing: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable paragraph."""
        parts = [f"loaded {self.loaded} tensors from {self.path} (format {self.format})"]
        for name in ("missing", "unexpected", "ignored", "expected_missing"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:5]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 5 else ""
                )
                parts.append(f"{name.replace('_', ' ')}: {shown}")
        return "; ".join(parts)


# ---------------------------------------------------------------------------- reading
def read_state_dict(path: Union[str, os.PathLike]) -> StateDict:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict.

    ``.safetensors`` files are read with ``safetensors``; anything else with
    ``torch.load(weights_only=True)``. Wrappers ``{"state_dict": ...}``,
    ``{"model": ...}`` and DDP's ``module.`` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist; pass the path of a downloaded checkpoint "
            f"(official SegFormer mit_b*.pth, Hugging Face pytorch_model.bin / model.safetensors, "
            f"timm ResNet) or pretrained='imagenet' to download it"
        )
    try:
        if path.suffix == ".safetensors" or _looks_like_safetensors(path):
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as e:
        raise PretrainedLoadError(
            f"{path}: reading .safetensors needs `pip install safetensors` ({e})"
        ) from e
    except Exception as e:  # torch/safetensors raise many types for a damaged file
        raise PretrainedLoadError(
            f"could not read weights file {path}: {type(e).__name__}: {e}. The file is corrupt, "
            f"truncated (interrupted download?) or not a PyTorch/safetensors checkpoint; download it again."
        ) from e
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedLoadError(
            f"{path} does not hold a state dict (a mapping of names to tensors); got {type(obj).__name__}"
        )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _looks_like_safetensors(path: Path) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON header starting with "{".
    # (torch.save files are zip archives starting with "PK"; legacy pickles with 0x80.)
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def detect_format(sd: StateDict) -> str:
    """Name the key convention of ``sd``: ``mit_official``, ``mit_hf``, ``timm_resnet``,
    ``vit_timm``, ``dinov2_official`` or ``pipa_segmentor``."""
    keys = list(sd)
    if any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys):
        return "pipa_segmentor"
    if any("patch_embeddings.0.proj.weight" in k for k in keys):
        return "mit_hf"
    if any(re.match(r"^(backbone\.)?patch_embed1\.proj\.weight$", k) for k in keys):
        return "mit_official"
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in keys):
        return "timm_resnet"
    vit = {k.removeprefix("backbone.") for k in keys}
    if {"pos_embed", "patch_embed.proj.weight"} <= vit and any(
        k.startswith("blocks.0.") for k in vit
    ):
        # the official DINOv2 release keeps its mask token and names registers differently
        return "dinov2_official" if {"mask_token", "register_tokens"} & vit else "vit_timm"
    raise PretrainedLoadError(
        "unrecognised checkpoint format: expected official SegFormer keys (patch_embed1.proj.weight), "
        "Hugging Face keys (segformer.encoder.patch_embeddings.0.proj.weight), timm/torchvision ResNet "
        "keys (conv1.weight, layer1.0.conv1.weight), DINOv2 ViT keys (timm or the official "
        f"release: pos_embed, blocks.0.attn.qkv.weight) or an exported segmentor; first keys: {keys[:5]}"
    )


# ------------------------------------------------------------------ key conversion
_HF_RULES = [
    # (pattern on the HF key after stripping "segformer.encoder.", replacement)
    (r"^patch_embeddings\.(\d)\.layer_norm\.", lambda m: f"patch_embed{int(m[1]) + 1}.norm."),
    (r"^patch_embeddings\.(\d)\.proj\.", lambda m: f"patch_embed{int(m[1]) + 1}.proj."),
    (r"^layer_norm\.(\d)\.", lambda m: f"norm{int(m[1]) + 1}."),
    (r"^block\.(\d)\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
]
_HF_BLOCK_PARTS = [
    ("layer_norm_1.", "norm1."),
    ("layer_norm_2.", "norm2."),
    ("attention.self.query.", "attn.q."),
    ("attention.self.sr.", "attn.sr."),
    ("attention.self.layer_norm.", "attn.norm."),
    ("attention.output.dense.", "attn.proj."),
    ("mlp.dense1.", "mlp.fc1."),
    ("mlp.dense2.", "mlp.fc2."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
]


def _strip_hf_prefix(key: str) -> Optional[str]:
    for prefix in ("segformer.encoder.", "encoder."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key if key.startswith(("patch_embeddings.", "block.", "layer_norm.")) else None


def hf_to_official(sd: StateDict) -> Tuple[StateDict, List[str]]:
    """Rename Hugging Face MiT keys to the official ones; returns ``(state_dict, ignored_keys)``.

    ``attention.self.key`` and ``attention.self.value`` are concatenated (key first)
    into ``attn.kv``. Classifier / decode-head keys are returned as ignored.
    """
    out: StateDict = OrderedDict()
    ignored, kv = [], {}
    for key, value in sd.items():
        k = _strip_hf_prefix(key)
        if k is None:
            ignored.append(key)
            continue
        for pattern, repl in _HF_RULES:
            k, n = re.subn(pattern, repl, k)
            if n:
                break
        kv_match = re.match(r"^(block\d\.\d+\.)attention\.self\.(key|value)\.(weight|bias)$", k)
        if kv_match:
            kv[(kv_match[1], kv_match[3], kv_match[2])] = value
            continue
        for hf_part, part in _HF_BLOCK_PARTS:
            if hf_part in k:
                k = k.replace(hf_part, part)
                break
        out[k] = value
    for (block, kind, which), value in kv.items():
        if which == "key":
            other = kv.get((block, kind, "value"))
            if other is None:
                raise PretrainedLoadError(
                    f"Hugging Face checkpoint has {block} key {kind} but no value {kind}"
                )
            out[f"{block}attn.kv.{kind}"] = torch.cat([value, other], dim=0)
    return out, ignored


def official_to_hf(sd: StateDict) -> StateDict:
    """Rename official MiT keys to Hugging Face ``SegformerForImageClassification`` keys.

    The inverse of :func:`hf_to_official` (``attn.kv`` is split into key / value;
    ``head.*`` becomes ``classifier.*``). Useful to share weights with 🤗 users.
    """
    inverse = [(part, hf_part) for hf_part, part in _HF_BLOCK_PARTS]
    out: StateDict = OrderedDict()
    for key, value in sd.items():
        if key.startswith("head."):
            out["classifier." + key[len("head.") :]] = value
            continue
        k = re.sub(
            r"^patch_embed(\d)\.norm\.",
            lambda m: f"patch_embeddings.{int(m[1]) - 1}.layer_norm.",
            key,
        )
        k = re.sub(
            r"^patch_embed(\d)\.proj\.", lambda m: f"patch_embeddings.{int(m[1]) - 1}.proj.", k
        )
        k = re.sub(r"^norm(\d)\.", lambda m: f"layer_norm.{int(m[1]) - 1}.", k)
        k = re.sub(r"^block(\d)\.", lambda m: f"block.{int(m[1]) - 1}.", k)
        kv_match = re.match(r"^(block\.\d\.\d+\.)attn\.kv\.(weight|bias)$", k)
        if kv_match:
            key_part, value_part = value.chunk(2, dim=0)
            out[f"segformer.encoder.{kv_match[1]}attention.self.key.{kv_match[2]}"] = key_part
            out[f"segformer.encoder.{kv_match[1]}attention.self.value.{kv_match[2]}"] = value_part
            continue
        for part, hf_part in inverse:
            if part in k:
                k = k.replace(part, hf_part)
                break
        out["segformer.encoder." + k] = value
    return out


def _official_mit(sd: StateDict) -> Tuple[StateDict, List[str]]:
    out, ignored = OrderedDict(), []
    for key, value in sd.items():
        k = key[len("backbone.") :] if key.startswith("backbone.") else key
        if k.startswith(("head.", "decode_head.", "auxiliary_head.")):
            ignored.append(key)
        else:
            out[k] = value
    return out, ignored


def _timm_resnet(sd: StateDict) -> Tuple[StateDict, List[str]]:
    out, ignored = OrderedDict(), []
    for key, value in sd.items():
        if key.startswith("fc."):
            ignored.append(key)
        else:
            out["body." + key] = value
    return out, ignored


# ---------------------------------------------------------------- architecture check
def _dinov2_to_timm(sd: StateDict) -> Tuple[StateDict, List[str]]:
    """A timm / official DINOv2 state dict in timm's names: the official release's
    ``register_tokens`` is timm's ``reg_token``; its ``mask_token`` (used only in
    pre-training) is not loaded."""
    out, ignored = {}, []
    for k, v in sd.items():
        k = k.removeprefix("backbone.")
        if k == "mask_token" or k.startswith("head."):
            ignored.append(k)
            continue
        out["reg_token" if k == "register_tokens" else k] = v
    return out, ignored


def _vit_signature(sd: StateDict) -> Tuple[int, int, bool]:
    """``(width, depth, registers)`` of a timm-named ViT state dict."""
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    return sd["patch_embed.proj.weight"].shape[0], depth, "reg_token" in sd


def _stage_depths(sd: StateDict, prefix: str, index_pos: int) -> Tuple[int, ...]:
    """Blocks per stage: distinct block indices under ``{prefix}{stage}.`` for stages 1-4."""
    return tuple(
        len({k.split(".")[index_pos] for k in sd if k.startswith(f"{prefix}{s}.")})
        for s in range(1, 5)
    )


def _describe_mit(width: int, depths: Tuple[int, ...]) -> str:
    for name, cfg in MIT_CONFIGS.items():
        if cfg.embed_dims[0] == width and cfg.depths == depths:
            return name
    return f"an MiT with stage-1 width {width} and depths {depths}"


_RESNET_DEPTHS = {(2, 2, 2, 2): "resnet18", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}


def _describe_resnet(depths: Tuple[int, ...]) -> str:
    # (3, 4, 6, 3) is both ResNet-34 and ResNet-50; tensor shapes tell them apart later.
    name = _RESNET_DEPTHS.get(depths, "resnet34/50" if depths == (3, 4, 6, 3) else None)
    return f"{name} (stage depths {depths})" if name else f"a ResNet with stage depths {depths}"


def _architecture_mismatch(encoder: nn.Module, sd: StateDict) -> Optional[Tuple[str, str]]:
    """``(file_arch, model_arch)`` descriptions when ``sd`` has other widths/depths, else None."""
    if isinstance(encoder, DINOv2Encoder):
        file_sig, model_sig = _vit_signature(sd), _vit_signature(encoder.vit.state_dict())
        desc = "ViT width {}, {} blocks, registers {}".format
        return (
            None
            if file_sig == model_sig
            else (desc(*file_sig), f"{encoder.name}, {desc(*model_sig)}")
        )
    if isinstance(encoder, MixVisionTransformer):
        w = sd.get("patch_embed1.proj.weight")
        if w is None:
            return None
        file_sig = (w.shape[0], _stage_depths(sd, "block", 1))
        model_sig = (encoder.config.embed_dims[0], tuple(encoder.config.depths))
        return (
            None if file_sig == model_sig else (_describe_mit(*file_sig), _describe_mit(*model_sig))
        )
    file_depths = _stage_depths(sd, "body.layer", 2)
    model_depths = tuple(len(getattr(encoder.body, f"layer{s}")) for s in range(1, 5))
    if file_depths == model_depths:
        return None
    return _describe_resnet(file_depths), f"{encoder.name} (stage depths {model_depths})"


def _model_name(encoder: nn.Module) -> str:
    if isinstance(encoder, DINOv2Encoder):
        return encoder.name
    if isinstance(encoder, MixVisionTransformer):
        return _describe_mit(encoder.config.embed_dims[0], tuple(encoder.config.depths))
    return getattr(encoder, "name", type(encoder).__name__)


# ------------------------------------------------------------------------ loading
def _copy_into(
    model: nn.Module, sd: StateDict, path: str, fmt: str, checkpoint_arch: Optional[str]
) -> LoadReport:
    """Shape-check ``sd`` against ``model`` and load it; raise on an architecture mismatch."""
    own = model.state_dict()
    mismatched = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    model_arch = _model_name(model) if not hasattr(model, "encoder") else getattr(model, "arch", "")
    if mismatched:
        examples = "; ".join(
            f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched[:3]
        )
        raise PretrainedLoadError(
            f"{path} does not fit this model: {len(mismatched)} tensor shape mismatch(es), e.g. {examples}. "
            f"The file holds {checkpoint_arch or 'another architecture'} weights but the model is "
            f"{model_arch}; pass the weights file of the matching architecture."
        )
    loaded = [k for k in sd if k in own]
    if not loaded:
        raise PretrainedLoadError(
            f"{path} ({fmt}) shares no parameter names with the model ({model_arch}); "
            f"it holds {checkpoint_arch or 'weights of another architecture'}"
        )
    result = model.load_state_dict(sd, strict=False)
    return LoadReport(
        path=path,
        format=fmt,
        loaded=len(loaded),
        missing=list(result.missing_keys),
        unexpected=list(result.unexpected_keys),
    )


def load_encoder_weights(encoder: nn.Module, source: Union[str, os.PathLike]) -> LoadReport:
    """Initialise ``encoder`` (MiT or ResNet) from a file or from ``"imagenet"`` (the hub).

    Raises:
        FileNotFoundError: the path does not exist.
        PretrainedLoadError: unreadable file, unknown format, or weights of another
            architecture (shape mismatch, or e.g. MiT-B5 depths into MiT-B3).
        RuntimeError: ``"imagenet"`` without network and without a cached copy.
    """
    if str(source) in ("imagenet", "dinov2"):
        if (str(source) == "dinov2") != isinstance(encoder, DINOv2Encoder):
            raise PretrainedLoadError(
                f"pretrained={str(source)!r} does not fit the encoder {_model_name(encoder)}: "
                "'dinov2' names the DINOv2 weights of a DINOv2 encoder, 'imagenet' the ImageNet "
                "weights of MiT / ResNet encoders"
            )
        return _load_from_hub(encoder, _model_name(encoder))
    return _load_encoder_state(encoder, read_state_dict(source), str(source))


def _load_encoder_state(encoder: nn.Module, raw: StateDict, path: str) -> LoadReport:
    name = _model_name(encoder)
    fmt = detect_format(raw)
    target = encoder  # the module the (converted) state dict is loaded into
    if isinstance(encoder, MixVisionTransformer):
        if fmt == "mit_hf":
            sd, ignored = hf_to_official(raw)
        elif fmt == "mit_official":
            sd, ignored = _official_mit(raw)
        else:
            raise PretrainedLoadError(
                f"{path} holds {fmt} weights, not an MiT encoder; {name} needs an official SegFormer "
                f"{name}.pth or a Hugging Face {HF_MIT_REPOS.get(name, 'nvidia/mit-b*')} checkpoint"
            )
    elif isinstance(encoder, DINOv2Encoder):
        if fmt not in ("vit_timm", "dinov2_official"):
            raise PretrainedLoadError(
                f"{path} holds {fmt} weights, not a DINOv2 ViT; {name} needs timm's "
                f"{encoder.timm_name} weights or the official DINOv2 .pth of that size"
            )
        sd, ignored = _dinov2_to_timm(raw)
        target = encoder.vit  # the file holds the ViT; the neck is ours and trains from scratch
    elif isinstance(encoder, ResNetEncoder):
        if fmt != "timm_resnet":
            raise PretrainedLoadError(
                f"{path} holds {fmt} weights, not a ResNet; {name} needs a timm or torchvision "
                f"ImageNet {name} state dict"
            )
        sd, ignored = _timm_resnet(raw)
    else:
        raise TypeError(f"no pretrained loader for encoder type {type(encoder).__name__}")
    mismatch = _architecture_mismatch(encoder, sd)
    if mismatch is not None:
        raise PretrainedLoadError(
            f"{path} holds {mismatch[0]} weights but the model's encoder is {mismatch[1]}; "
            f"pass the weights file of {mismatch[1]} (or build the matching architecture)"
        )
    report = _copy_into(target, sd, path, fmt, None)
    report.ignored = ignored
    _log_report(report)
    return report


def load_segmentor_weights(
    seg: nn.Module, path: Union[str, os.PathLike], strict: bool = True
) -> LoadReport:
    """Load a full segmentor state dict (e.g. from ``export_weights``) into ``seg``.

    Projection heads missing from the file are reported as ``expected_missing``.
    With ``strict``, other missing / unexpected keys raise :class:`PretrainedLoadError`.
    """
    return _load_segmentor_state(seg, read_state_dict(path), str(path), strict)


def _load_segmentor_state(seg: nn.Module, sd: StateDict, path: str, strict: bool) -> LoadReport:
    fmt = detect_format(sd)
    if fmt != "pipa_segmentor":
        raise PretrainedLoadError(
            f"{path} holds {fmt} weights, not a pipa_core segmentor; load encoder weights with "
            f"build_segmentor(arch, pretrained=path) instead"
        )
    report = _copy_into(seg, sd, path, fmt, None)
    report.expected_missing = [k for k in report.missing if k.startswith("proj_heads.")]
    report.missing = [k for k in report.missing if not k.startswith("proj_heads.")]
    if strict and (report.missing or report.unexpected):
        raise PretrainedLoadError(
            f"{path} does not match the segmentor ({getattr(seg, 'arch', '')}): "
            f"missing {report.missing[:5]}, unexpected {report.unexpected[:5]}; "
            f"pass strict=False to load what matches"
        )
    _log_report(report)
    return report


def load_pretrained(seg: nn.Module, source: Union[str, os.PathLike]) -> LoadReport:
    """Initialise a segmentor from ``source``: ``"imagenet"``, encoder weights or an exported segmentor.

    The file is read once; its format decides whether it initialises the encoder
    (``mit_official``, ``mit_hf``, ``timm_resnet``) or the whole segmentor
    (``pipa_segmentor``).
    """
    if str(source) in ("imagenet", "dinov2"):
        return load_encoder_weights(seg.encoder, str(source))
    raw = read_state_dict(source)
    if detect_format(raw) == "pipa_segmentor":
        return _load_segmentor_state(seg, raw, str(source), strict=True)
    return _load_encoder_state(seg.encoder, raw, str(source))


def _log_report(report: LoadReport) -> None:
    level = logging.WARNING if report.missing or report.unexpected else logging.INFO
    log.log(level, report.summary())


# ---------------------------------------------------------------------------- hub
def _load_from_hub(encoder: nn.Module, name: str) -> LoadReport:
    if isinstance(encoder, MixVisionTransformer) and name in HF_MIT_REPOS:
        repo = HF_MIT_REPOS[name]
        path = _hf_download(repo, name)
        return load_encoder_weights(encoder, path)
    if isinstance(encoder, ResNetEncoder):
        return _timm_hub(encoder, name)
    if isinstance(encoder, DINOv2Encoder):
        return _timm_dinov2_hub(encoder)
    raise ValueError(f"no ImageNet weights are published for {name}; pass a weights file path")


def _hf_download(repo: str, name: str) -> str:
    hint = (
        f"Download the ImageNet weights by hand and pass their path, e.g. "
        f"build_segmentor('daformer_{name}', pretrained='/path/to/{name}.pth'): either the official "
        f"{name}.pth ({_OFFICIAL_URL}) or pytorch_model.bin / model.safetensors from "
        f"https://huggingface.co/{repo}"
    )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise RuntimeError(
            f"pretrained='imagenet' needs `pip install huggingface_hub`. {hint}"
        ) from e
    errors = []
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if filename.endswith(".safetensors"):
            try:
                import safetensors  # noqa: F401
            except ImportError:
                continue
        try:
            return hf_hub_download(repo_id=repo, filename=filename)
        except Exception as e:  # offline, DNS, 404, auth: all mean "not available"
            errors.append(
                f"{filename}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
    raise RuntimeError(
        f"could not get ImageNet weights for {name} from the Hugging Face hub ({repo}) and no cached "
        f"copy exists ({'; '.join(errors)}). {hint}"
    )


def _timm_hub(encoder: ResNetEncoder, name: str) -> LoadReport:
    import timm

    try:
        state = timm.create_model(name, pretrained=True).state_dict()
    except Exception as e:  # offline, DNS, missing cache
        raise RuntimeError(
            f"could not get timm ImageNet weights for {name} from the hub ({type(e).__name__}: {e}). "
            f"Download them by hand (e.g. the timm '{name}' model's pytorch_model.bin / model.safetensors "
            f"from https://huggingface.co/timm, or torchvision's {name} weights) and pass the path: "
            f"build_segmentor('deeplabv2_{name.replace('resnet', 'r')}', pretrained='/path/to/file')"
        ) from e
    sd, ignored = _timm_resnet(state)
    report = _copy_into(encoder, sd, f"timm hub ({name})", "timm_resnet", name)
    report.ignored = ignored
    _log_report(report)
    return report


def _timm_dinov2_hub(encoder: DINOv2Encoder) -> LoadReport:
    """DINOv2 weights through timm's hub (``timm/<name>.lvd142m`` on Hugging Face)."""
    import timm

    try:
        state = timm.create_model(encoder.timm_name, pretrained=True).state_dict()
    except Exception as e:  # offline, DNS, missing cache
        raise RuntimeError(
            f"could not get the DINOv2 weights of {encoder.timm_name} from the hub "
            f"({type(e).__name__}: {e}). On an offline machine download them elsewhere (timm's "
            f"https://huggingface.co/timm/{encoder.timm_name}.lvd142m, or the official "
            "dinov2_vit*14*_pretrain.pth) and pass the file: model.pretrained=/path/to/file"
        ) from e
    sd, ignored = _dinov2_to_timm(state)
    report = _copy_into(encoder.vit, sd, f"timm hub ({encoder.timm_name})", "vit_timm", None)
    report.ignored = ignored
    _log_report(report)
    return report
