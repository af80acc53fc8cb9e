"""PiPa / PiPa++ reference implementation in plain PyTorch.

Sub-packages: ``data`` (benchmarks, transforms), ``models`` (MiT, DAFormer,
DeepLab-v2), ``losses`` (pixel / patch / temporal / prototype contrast),
``uda`` (self-training engine), ``eval`` (mIoU, t-SNE, CCD), ``viz``.
"""

__version__ = "0.1.0"
