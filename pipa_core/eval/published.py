"""Published mIoU numbers to print beside ours (from the papers' tables).

All values are mIoU in percent on the Cityscapes (-Seq) validation set, as
reported by the papers. Only the mean is published in the sources kept in
this repository, so per-class columns stay ours alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedResult:
    """One published number: ``method`` on ``benchmark`` under class ``protocol``."""

    method: str
    benchmark: str
    protocol: str
    miou: float
    backbone: str
    source: str


_P = PublishedResult
#: Benchmark preset name -> published results.
PUBLISHED: dict[str, tuple[PublishedResult, ...]] = {
    "gta2cs": (
        _P("DAFormer", "gta2cs", "cs19", 68.3, "MiT-B5", "Hoyer et al., CVPR 2022"),
        _P("HRDA", "gta2cs", "cs19", 73.8, "MiT-B5", "Hoyer et al., ECCV 2022"),
        _P("MIC", "gta2cs", "cs19", 75.9, "MiT-B5", "Hoyer et al., CVPR 2023"),
        _P("PiPa (DAFormer)", "gta2cs", "cs19", 71.7, "MiT-B5", "Chen et al., PiPa"),
        _P("PiPa (HRDA)", "gta2cs", "cs19", 75.6, "MiT-B5", "Chen et al., PiPa"),
        _P("PiPa++", "gta2cs", "cs19", 76.6, "MiT-B5", "Chen et al., PiPa++"),
        _P("SPCL", "gta2cs", "cs19", 52.1, "DeepLab-v2 R101", "Xie et al., SPCL"),
    ),
    "syn2cs": (
        _P("DAFormer", "syn2cs", "syn16", 60.9, "MiT-B5", "Hoyer et al., CVPR 2022"),
        _P("HRDA", "syn2cs", "syn16", 65.8, "MiT-B5", "Hoyer et al., ECCV 2022"),
        _P("MIC", "syn2cs", "syn16", 67.3, "MiT-B5", "Hoyer et al., CVPR 2023"),
        _P("PiPa (HRDA)", "syn2cs", "syn16", 68.2, "MiT-B5", "Chen et al., PiPa"),
        _P("PiPa++", "syn2cs", "syn16", 68.7, "MiT-B5", "Chen et al., PiPa++"),
    ),
    "viper2csseq": (_P("PiPa++", "viper2csseq", "viper15", 62.3, "MiT-B5", "Chen et al., PiPa++"),),
    "synseq2csseq": (
        _P("PiPa++", "synseq2csseq", "synseq11", 72.3, "MiT-B5", "Chen et al., PiPa++"),
    ),
}


def published_for(benchmark: str) -> tuple[PublishedResult, ...]:
    """Published results for a benchmark preset (empty for benchmarks without any, e.g. ``synthetic``)."""
    return PUBLISHED.get(benchmark, ())


def comparison_table(benchmark: str, ours: dict[str, float], protocol: str | None = None) -> str:
    """Markdown table of the published mIoUs of ``benchmark`` followed by ``ours`` (name -> mIoU).

    Only published rows whose class protocol equals ``protocol`` (when given) are shown,
    so a 13-class number is never put beside a 16-class one.
    """
    rows = [r for r in published_for(benchmark) if protocol is None or r.protocol == protocol]
    lines = ["| method | backbone | protocol | mIoU | source |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.method} | {r.backbone} | {r.protocol} | {r.miou:.1f} | {r.source} |" for r in rows
    ]
    lines += [
        f"| **{k}** (this run) | | {protocol or ''} | {v:.1f} | ours |" for k, v in ours.items()
    ]
    return "\n".join(lines)
