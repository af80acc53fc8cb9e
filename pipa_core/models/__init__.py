"""Models: MiT encoders, DAFormer / SegFormer / DeepLab-v2 heads, the segmentor, inference
and pretrained-weight loading. Start with :func:`build_segmentor`."""

from pipa_core.models.builder import ARCHS, build_from_config, build_segmentor
from pipa_core.models.decoders import DAFormerHead, SegFormerHead
from pipa_core.models.deeplabv2 import ASPPClassifier, ResNetEncoder
from pipa_core.models.inference import predict
from pipa_core.models.mit import (
    MIT_CONFIGS,
    MixVisionTransformer,
    mit_b0,
    mit_b1,
    mit_b2,
    mit_b3,
    mit_b4,
    mit_b5,
)
from pipa_core.models.pretrained import (
    LoadReport,
    PretrainedLoadError,
    load_encoder_weights,
    load_pretrained,
    read_state_dict,
)
from pipa_core.models.projection import ProjectionHead
from pipa_core.models.segmentor import IMAGENET_MEAN, IMAGENET_STD, Segmentor

__all__ = [
    "ARCHS",
    "ASPPClassifier",
    "build_from_config",
    "DAFormerHead",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadReport",
    "MIT_CONFIGS",
    "MixVisionTransformer",
    "PretrainedLoadError",
    "ProjectionHead",
    "ResNetEncoder",
    "SegFormerHead",
    "Segmentor",
    "build_segmentor",
    "load_encoder_weights",
    "load_pretrained",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
    "predict",
    "read_state_dict",
]
