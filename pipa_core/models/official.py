"""Released checkpoints of the official DAFormer / HRDA / MIC / PiPa code (mmseg 0.x).

Those repositories save the whole UDA wrapper with mmcv's ``save_checkpoint``:
``{"meta": {...}, "state_dict": {...}, "optimizer": {...}}`` whose state dict holds
three segmentors under three prefixes:

* ``model.``: the student, the weights every published number is computed with;
* ``ema_model.``: the EMA teacher (same keys and shapes);
* ``imnet_model.``: the frozen ImageNet copy of the feature-distance loss;

plus, in PiPa's release, the top-level ``project.*`` / ``classifier.*`` of its patch
contrast (they read the teacher's logits and are not part of a segmentor).

An mmseg segmentor differs from ours in names only, except in two places:

* DAFormer's head embeds each level with an ``nn.Linear`` (``embed_layers.{i}.proj``,
  ``(256, C)``); ours is the equivalent 1x1 convolution (``(256, C, 1, 1)``);
* HRDA's scale attention concatenates the embedded levels finest first; ours
  (:class:`~pipa_core.models.decoders.SegFormerHead`) coarsest first, so the input
  channels of its 1x1 fusion conv are the same blocks in the reverse order.

:func:`read_released_checkpoint` reads such a file (``weights_only=True``; a file that
holds other objects is refused unless the caller opts in),
:func:`infer_architecture` names the model from its keys and shapes, and
:func:`build_released_segmentor` builds the matching pipa_core segmentor with every
tensor loaded. ``python -m pipa_core.models.official FILE`` prints what a file holds.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from pipa_core.models.mit import MIT_CONFIGS
from pipa_core.models.pretrained import LoadReport, PretrainedLoadError

__all__ = [
    "PREFIXES",
    "ReleasedArch",
    "ReleasedCheckpoint",
    "UnsafeCheckpointError",
    "as_released_checkpoint",
    "build_released_segmentor",
    "infer_architecture",
    "is_released_state_dict",
    "load_checkpoint_object",
    "read_released_checkpoint",
    "released_to_pipa",
]

log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

#: ``which`` -> state-dict prefix of that segmentor in a released file.
PREFIXES = {"student": "model.", "teacher": "ema_model.", "imagenet": "imnet_model."}
_TRUST_HINT = (
    "If you trust where the file comes from (e.g. the authors' release), opt in to a full "
    "unpickling with trust_checkpoint=True (notebooks: -p trust_checkpoint True; command line: "
    "--trust-checkpoint). That runs torch.load(weights_only=False), which can execute code "
    "hidden in a malicious file."
)


class UnsafeCheckpointError(PretrainedLoadError):
    """``torch.load(weights_only=True)`` refused objects in the file; see the message."""


# --------------------------------------------------------------------------- reading
@dataclass
class ReleasedCheckpoint:
    """A released mmseg training checkpoint, read.

    Attributes:
        path: the file.
        state_dict: every tensor of the file's ``state_dict`` (all prefixes).
        meta: the file's ``meta`` dict (``config`` text, ``iter``, ``CLASSES`` ...), or ``{}``.
        has_optimizer: whether the file holds an ``optimizer`` state (training checkpoints).
    """

    path: str
    state_dict: StateDict
    meta: dict = field(default_factory=dict)
    has_optimizer: bool = False

    def prefixes(self) -> Dict[str, int]:
        """Number of tensors under each first key component (``model``, ``ema_model`` ...)."""
        counts: Dict[str, int] = {}
        for k in self.state_dict:
            head = k.split(".", 1)[0]
            counts[head] = counts.get(head, 0) + 1
        return counts

    def part(self, which: str) -> StateDict:
        """The tensors of one segmentor (``student``, ``teacher``, ``imagenet``), prefix removed."""
        if which not in PREFIXES:
            raise ValueError(f"which must be one of {sorted(PREFIXES)}, got {which!r}")
        prefix = PREFIXES[which]
        part = {k[len(prefix) :]: v for k, v in self.state_dict.items() if k.startswith(prefix)}
        if not part:
            raise PretrainedLoadError(
                f"{self.path} holds no {which} weights (no keys starting with {prefix!r}; the "
                f"file has {self.prefixes()}). Released training checkpoints hold 'student' "
                "(model.), 'teacher' (ema_model.) and 'imagenet' (imnet_model.); a file made by "
                "mmseg's publish_model.py keeps only the student: use which='student'"
            )
        return part

    @property
    def config_text(self) -> str:
        """The training config the file records (``meta["config"]``), or ``""``."""
        text = self.meta.get("config", "")
        return text if isinstance(text, str) else ""


def is_released_state_dict(sd: dict) -> bool:
    """Whether ``sd`` is the state dict of an mmseg UDA wrapper (``model.backbone.*`` keys)
    or of a published mmseg segmentor (``backbone.*`` + ``decode_head.*``)."""
    keys = [k for k in sd if isinstance(k, str)]
    wrapped = any(k.startswith("model.backbone.") for k in keys)
    plain = any(k.startswith("backbone.") for k in keys) and any(
        k.startswith("decode_head.") for k in keys
    )
    return wrapped or plain


def _refused_globals(message: str) -> List[str]:
    found = re.findall(r"GLOBAL ([\w.]+)", message) + re.findall(
        r"Unsupported global: ([\w.]+)", message
    )
    return sorted(set(found))


def _torch_load(path: Path, weights_only: bool):
    # zip-format files (torch >= 1.6, what mmcv writes) are memory-mapped: reading a
    # 1.7 GB training checkpoint then costs only the tensors actually used.
    mmap = zipfile.is_zipfile(path)
    return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)


def load_checkpoint_object(path: str | os.PathLike, trust_checkpoint: bool = False):
    """``torch.load`` a checkpoint file safely: ``weights_only=True`` (memory-mapped for
    zip files), or with ``trust_checkpoint`` a full unpickling when the safe load refuses.

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeCheckpointError: refused objects and no opt-in; the message names them.
        PretrainedLoadError: a truncated or unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"no checkpoint file at {p}; download the released .pth (docs/analysis.md lists "
            "where) and pass its path"
        )
    try:
        return _torch_load(p, weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_checkpoint:
            names = _refused_globals(str(e))
            what = ", ".join(names) if names else "objects other than tensors and plain containers"
            raise UnsafeCheckpointError(
                f"{p}: torch.load(weights_only=True) refused to unpickle {what} (stored in the "
                f"file next to the weights, e.g. in its meta or optimizer entries). {_TRUST_HINT}"
            ) from e
        log.warning("%s: loading with weights_only=False (trust_checkpoint=True)", p)
        return _torch_load(p, weights_only=False)
    except Exception as e:  # zip / pickle / EOF errors of a damaged file
        raise PretrainedLoadError(
            f"could not read {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "The file is truncated (an interrupted download or copy?) or not a PyTorch "
            "checkpoint; download or copy it again."
        ) from e


def as_released_checkpoint(obj, path: str | os.PathLike) -> ReleasedCheckpoint:
    """A loaded file object as a :class:`ReleasedCheckpoint` (or a clear error if it is none)."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not is_released_state_dict(sd):
        first = list(sd)[:5] if isinstance(sd, dict) else type(obj).__name__
        raise PretrainedLoadError(
            f"{path} is not a DAFormer / HRDA / MIC / PiPa checkpoint: expected a 'state_dict' "
            f"with keys such as model.backbone.patch_embed1.proj.weight; got {first}"
        )
    if not any(k.startswith("model.") for k in sd):  # publish_model.py output: student only
        sd = {"model." + k: v for k, v in sd.items()}
    meta = obj.get("meta", {}) if "state_dict" in obj else {}
    return ReleasedCheckpoint(
        path=str(path),
        state_dict=dict(sd),
        meta=meta if isinstance(meta, dict) else {},
        has_optimizer="optimizer" in obj,
    )


def read_released_checkpoint(
    path: str | os.PathLike, trust_checkpoint: bool = False
) -> ReleasedCheckpoint:
    """Read a released DAFormer / HRDA / MIC / PiPa ``.pth`` file.

    Args:
        path: the file (e.g. PiPa's ``pipa_gta_to_cs.pth`` or a work dir's ``latest.pth``).
        trust_checkpoint: unpickle everything (``weights_only=False``) when the safe
            loader refuses some object in the file. Never the default.

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeCheckpointError: the file holds objects ``weights_only=True`` refuses; the
            message names them and the opt-in.
        PretrainedLoadError: unreadable / truncated file, or not an mmseg checkpoint.
    """
    return as_released_checkpoint(load_checkpoint_object(path, trust_checkpoint), path)


# ------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class ReleasedArch:
    """The architecture a released state dict describes.

    Attributes:
        method: ``"DAFormer"``, ``"HRDA"``, ``"MIC(HRDA)"``, ``"MIC(DAFormer)"``,
            ``"PiPa(HRDA)"`` or ``"PiPa(DAFormer)"``.
        encoder: ``"mit_b0"`` ... ``"mit_b5"``.
        hrda: HRDA's multi-resolution head (``decode_head.head`` + ``scale_attention``).
        stage_heads: PiPa's ``cls_head`` / ``proj_head``.
        num_classes: classifier outputs.
        channels: decoder width (256).
    """

    method: str
    encoder: str
    hrda: bool
    stage_heads: bool
    num_classes: int
    channels: int

    @property
    def arch(self) -> str:
        """The pipa_core architecture name (``hrda_daformer_mit_b5`` ...)."""
        return ("hrda_" if self.hrda else "") + f"daformer_{self.encoder}"

    def describe(self) -> str:
        return f"{self.method} with {self.encoder.replace('mit_b', 'MiT-B')} ({self.arch})"


def _mit_name(sd: StateDict) -> str:
    w = sd.get("backbone.patch_embed1.proj.weight")
    if w is None:
        raise PretrainedLoadError(
            "the checkpoint has no backbone.patch_embed1.proj.weight: only MiT (SegFormer) "
            "encoders are supported for released checkpoints"
        )
    depths = tuple(
        len({k.split(".")[2] for k in sd if k.startswith(f"backbone.block{s}.")})
        for s in range(1, 5)
    )
    for name, cfg in MIT_CONFIGS.items():
        if cfg.embed_dims[0] == w.shape[0] and tuple(cfg.depths) == depths:
            return name
    raise PretrainedLoadError(
        f"the backbone (stage-1 width {w.shape[0]}, depths {depths}) is no MiT-B0...B5"
    )


def _is_mic(config_text: str) -> bool:
    # MIC's configs add a masking consistency module with a block mask generator
    return bool(re.search(r"mask_generator|MaskingConsistency|mask_block_size", config_text))


def infer_architecture(sd: StateDict, config_text: str = "") -> ReleasedArch:
    """Name the architecture of one segmentor's state dict (prefix already removed).

    DAFormer: ``decode_head.embed_layers`` + ``fuse_layer.aspp_modules``; HRDA: the same
    under ``decode_head.head.`` plus ``decode_head.scale_attention.``; PiPa: ``cls_head``
    and ``proj_head``. MIC has HRDA's (or DAFormer's) tensors; it is recognised from the
    config text a training checkpoint records. MiT-B0...B5 from the backbone's shapes.
    """
    encoder = _mit_name(sd)
    hrda = any(k.startswith("decode_head.scale_attention.") for k in sd)
    head = "decode_head.head." if hrda else "decode_head."
    if f"{head}fuse_layer.bottleneck.conv.weight" not in sd:
        variant = (
            "the 'SegFormer C_e=256' head (fuse_layer.conv)"
            if f"{head}fuse_layer.conv.weight" in sd
            else "no DAFormer head"
        )
        raise PretrainedLoadError(
            f"the checkpoint has {variant}; supported released heads: DAFormer's sepaspp head "
            "(decode_head.fuse_layer.aspp_modules / bottleneck) and HRDA's (decode_head.head.*, "
            "decode_head.scale_attention.*)"
        )
    stage_heads = any(k.startswith(("cls_head.", "proj_head.")) for k in sd)
    base = "HRDA" if hrda else "DAFormer"
    if stage_heads:
        method = f"PiPa({base})"
    elif _is_mic(config_text):
        method = f"MIC({base})"
    else:
        method = base
    conv_seg = sd[f"{head}conv_seg.weight"]
    return ReleasedArch(method, encoder, hrda, stage_heads, conv_seg.shape[0], conv_seg.shape[1])


# ------------------------------------------------------------------- key mapping
def _rename(rest: str, rules: List[Tuple[str, str]]) -> Optional[str]:
    """``rest`` rewritten by the first rule whose pattern matches it, or None."""
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, rest)
        if n:
            return new
    return None


#: Official DAFormer-head key (after the head prefix) -> our ``DAFormerHead`` key.
_DAFORMER_HEAD_RULES = [
    (r"^embed_layers\.(\d)\.proj\.", r"embeds.\1."),
    (r"^fuse_layer\.aspp_modules\.0\.conv\.", "fuse.branches.0.0."),
    (r"^fuse_layer\.aspp_modules\.0\.bn\.", "fuse.branches.0.1."),
    (r"^fuse_layer\.aspp_modules\.(\d)\.depthwise_conv\.conv\.", r"fuse.branches.\1.0.0."),
    (r"^fuse_layer\.aspp_modules\.(\d)\.depthwise_conv\.bn\.", r"fuse.branches.\1.0.1."),
    (r"^fuse_layer\.aspp_modules\.(\d)\.pointwise_conv\.conv\.", r"fuse.branches.\1.1.0."),
    (r"^fuse_layer\.aspp_modules\.(\d)\.pointwise_conv\.bn\.", r"fuse.branches.\1.1.1."),
    (r"^fuse_layer\.bottleneck\.conv\.", "fuse.bottleneck.0."),
    (r"^fuse_layer\.bottleneck\.bn\.", "fuse.bottleneck.1."),
    (r"^conv_seg\.", "conv_seg."),
]
#: Official HRDA ``scale_attention.`` key -> our scale-attention (``SegFormerHead``) key.
_ATTENTION_RULES = [
    (r"^embed_layers\.(\d)\.proj\.", r"embeds.\1."),
    (r"^fuse_layer\.conv\.", "linear_fuse.0."),
    (r"^fuse_layer\.bn\.", "linear_fuse.1."),
    (r"^conv_seg\.", "conv_seg."),
]


def _reverse_level_blocks(w: torch.Tensor, levels: int) -> torch.Tensor:
    """Input channels of a fusion conv ``(C_out, levels·E, 1, 1)`` with its level blocks
    reversed: official (finest first) -> ours (coarsest first)."""
    return torch.cat(list(reversed(w.chunk(levels, dim=1))), dim=1)


def released_to_pipa(
    sd: StateDict, arch: ReleasedArch, origin: Optional[Dict[str, str]] = None
) -> Tuple[StateDict, List[str]]:
    """Rename one released segmentor's tensors to pipa_core names.

    Returns ``(state_dict, unused)``: the converted tensors (embedding Linears reshaped to
    1x1 convs, the scale attention's fusion conv with its level blocks reordered) and the
    keys that have no place in a pipa_core segmentor (``auxiliary_head.*`` ...).
    ``origin``, if given, is filled with pipa_core name -> released name.
    """
    head = "decode_head.head." if arch.hrda else "decode_head."
    out: StateDict = {}
    unused: List[str] = []
    for key, value in sd.items():
        new: Optional[str] = None
        if key.startswith("backbone."):
            new = "encoder." + key[len("backbone.") :]
        elif key.startswith(head):
            rest = _rename(key[len(head) :], _DAFORMER_HEAD_RULES)
            new = "decoder." + rest if rest else None
        elif arch.hrda and key.startswith("decode_head.scale_attention."):
            rest = _rename(key[len("decode_head.scale_attention.") :], _ATTENTION_RULES)
            new = "scale_attention." + rest if rest else None
            if rest == "linear_fuse.0.weight":
                value = _reverse_level_blocks(value, 4)
        elif key.startswith(("cls_head.", "proj_head.")):
            new = "stage_heads." + key
        if new is None:
            unused.append(key)
            continue
        if re.match(r"^(decoder|scale_attention)\.embeds\.\d\.weight$", new) and value.dim() == 2:
            value = value[:, :, None, None]  # nn.Linear (E, C) -> 1x1 conv (E, C, 1, 1)
        out[new] = value
        if origin is not None:
            origin[new] = key
    return out, unused


# ---------------------------------------------------------------------- building
def _build(arch: ReleasedArch):
    from pipa_core.models.builder import build_segmentor

    hrda = {"detail_size": (512, 512), "lr_scale": 0.5} if arch.hrda else None
    return build_segmentor(
        arch.arch,
        num_classes=arch.num_classes,
        proj_heads=(),
        decoder_channels=arch.channels,
        stage_heads=arch.stage_heads,
        hrda=hrda,
    )


def build_released_segmentor(ck: ReleasedCheckpoint, which: str = "student"):
    """The pipa_core segmentor of one model in a released file, every tensor loaded.

    HRDA models get HRDA's detail crop (512x512, LR scale 0.5; inference slides HR
    windows of 512 at stride 256 over the image, as the release's ``hr_slide_inference``).

    Returns:
        ``(segmentor in eval mode, ReleasedArch, LoadReport)``. The report's ``ignored``
        lists by name every tensor of the file that was not loaded (the other two models,
        PiPa's top-level ``project`` / ``classifier``, heads without a place here).

    Raises:
        PretrainedLoadError: a tensor the segmentor needs is missing, or has another shape;
            the message names the key, both shapes and the inferred architecture.
    """
    part = ck.part(which)
    arch = infer_architecture(part, ck.config_text)
    seg = _build(arch)
    origin: Dict[str, str] = {}
    converted, unused = released_to_pipa(part, arch, origin)
    own = seg.state_dict()
    bad = [k for k in converted if k in own and own[k].shape != converted[k].shape]
    if bad:
        k = bad[0]
        raise PretrainedLoadError(
            f"{ck.path}: {len(bad)} tensor(s) of the {which} have unexpected shapes for "
            f"{arch.describe()}, e.g. {PREFIXES[which]}{origin[k]} (pipa_core {k}): file "
            f"{tuple(converted[k].shape)} vs model {tuple(own[k].shape)}. The file is damaged "
            "or holds another architecture."
        )
    missing = [k for k in own if k not in converted]
    if missing:
        raise PretrainedLoadError(
            f"{ck.path}: the {which} lacks {len(missing)} tensor(s) that {arch.describe()} needs, "
            f"e.g. {', '.join(missing[:3])} (pipa_core names). The file is incomplete or holds "
            "another architecture."
        )
    unused += [k for k in converted if k not in own]
    seg.load_state_dict({k: v for k, v in converted.items() if k in own}, strict=True)
    prefix = PREFIXES[which]
    others = [k for k in ck.state_dict if not k.startswith(prefix)]
    report = LoadReport(
        path=ck.path,
        format=f"released {arch.method}",
        loaded=len(own),
        ignored=[prefix + k for k in unused] + others,
    )
    seg.pretrained_report = report
    log.info(report.summary())
    return seg.eval(), arch, report


# --------------------------------------------------------------------------- CLI
def _describe_file(ck: ReleasedCheckpoint, which: str) -> str:
    _, arch, report = build_released_segmentor(ck, which)
    groups: Dict[str, int] = {}
    for k in report.ignored:
        head = k.split(".", 1)[0]
        groups[head] = groups.get(head, 0) + 1
    lines = [
        f"file:          {ck.path}",
        f"models:        {ck.prefixes()}",
        f"meta:          iter={ck.meta.get('iter')}, optimizer state: {ck.has_optimizer}",
        f"architecture:  {arch.describe()}, {arch.num_classes} classes",
        f"loaded:        {report.loaded} tensors of the {which} ({PREFIXES[which]}*)",
        f"not loaded:    {groups or 'none'}",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipa_core.models.official",
        description="Show what a released DAFormer / HRDA / MIC / PiPa checkpoint holds and check "
        "that it loads into pipa_core.",
    )
    parser.add_argument("checkpoint", help="the released .pth file")
    parser.add_argument("--which", default="student", choices=sorted(PREFIXES))
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle objects that torch.load(weights_only=True) refuses (only for files you trust)",
    )
    args = parser.parse_args(argv)
    try:
        ck = read_released_checkpoint(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
        print(_describe_file(ck, args.which))
    except (FileNotFoundError, PretrainedLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
