"""Tiny dataset trees with the real naming schemes and label encodings, for the data tests.

Each ``make_*`` writes a few small images and labels under ``root`` exactly as
the real download is laid out, and returns what a test needs to check
conversions: ``{relative label path: expected train-ID array}`` for the raw
labels. Image pixel values encode the label (``R = label id``) so tests can
check that a joint transform moved image and label together.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipa_core.data.synthia import SYNTHIA_SEQ_ID_TO_TRAINID
from pipa_core.data.viper import VIPER_ID_TO_TRAINID, VIPER_PALETTE
from pipa_core.labels import CITYSCAPES_ID_TO_TRAINID, PALETTE, SYNTHIA_ID_TO_TRAINID

H, W = 24, 32


def _expect(ids: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = np.full(ids.shape, 255, dtype=np.uint8)
    for k, v in mapping.items():
        out[ids == k] = v
    return out


def _ids(rng: np.random.Generator, pool: list[int], h: int = H, w: int = W) -> np.ndarray:
    """A blocky id map (4x4 blocks) drawn from ``pool``."""
    small = rng.choice(pool, size=(h // 4, w // 4))
    return np.kron(small, np.ones((4, 4), dtype=np.int64)).astype(np.int64)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 ``(H, W, 3)`` image (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def image_for(ids: np.ndarray) -> np.ndarray:
    """An RGB image whose R channel is the label id (mod 256), G a gradient, B 128."""
    g = np.tile(np.linspace(0, 255, ids.shape[1]).astype(np.uint8), (ids.shape[0], 1))
    return np.stack([(ids % 256).astype(np.uint8), g, np.full_like(g, 128)], axis=-1)


def write_palette(path: Path, ids: np.ndarray, palette: list[tuple[int, int, int]]) -> None:
    """Write ``ids`` as an indexed-colour ('P') PNG, the GTA5 / VIPER encoding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    im.save(path)


def write_gray(path: Path, ids: np.ndarray) -> None:
    """Write ``ids`` as an 8-bit grayscale PNG (Cityscapes / ACDC ``*_labelIds.png``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)


def write_synthia_label(path: Path, ids: np.ndarray) -> None:
    """SYNTHIA encoding: 16-bit PNG, class id in channel R, instance id in G."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint16)
    rgb[..., 0] = ids
    rgb[..., 1] = 7  # instance ids must not leak into the class
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())  # OpenCV writes BGR


_CS_POOL = [0, 7, 8, 11, 21, 23, 24, 26, 33, 4]  # incl. unlabeled (0) and 'static' (4) -> 255
_CS_PALETTE = [(0, 0, 0)] * 34
for _lid, _tid in CITYSCAPES_ID_TO_TRAINID.items():
    if 0 <= _lid < 34 and _tid < 19:
        _CS_PALETTE[_lid] = PALETTE[_tid]


def make_gta(root: Path, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """GTA5: ``images/00001.png`` + ``labels/00001.png`` (palette PNG of Cityscapes ids)."""
    rng = np.random.default_rng(seed)
    expected = {}
    for i in range(1, n + 1):
        ids = _ids(rng, _CS_POOL + [250])  # 250: not a Cityscapes id -> 255
        write_rgb(root / "images" / f"{i:05d}.png", image_for(ids))
        write_palette(root / "labels" / f"{i:05d}.png", ids, _CS_PALETTE)
        expected[f"labels/{i:05d}_labelTrainIds.png"] = _expect(ids, CITYSCAPES_ID_TO_TRAINID)
    return expected


def make_synthia(root: Path, n: int = 4, seed: int = 1) -> dict[str, np.ndarray]:
    """SYNTHIA-RAND-CITYSCAPES: ``RGB/0000000.png`` + 16-bit ``GT/LABELS/0000000.png``."""
    rng = np.random.default_rng(seed)
    expected = {}
    for i in range(n):
        ids = _ids(rng, [0, 1, 2, 3, 4, 5, 8, 10, 15, 21, 13, 300])  # 13, 300: unknown -> 255
        write_rgb(root / "RGB" / f"{i:07d}.png", image_for(ids))
        write_synthia_label(root / "GT" / "LABELS" / f"{i:07d}.png", ids)
        expected[f"GT/LABELS/{i:07d}_labelTrainIds.png"] = _expect(ids, SYNTHIA_ID_TO_TRAINID)
    return expected


def make_cityscapes(
    root: Path,
    splits=("train", "val"),
    cities=("aachen", "zurich"),
    per_city: int = 2,
    seed: int = 2,
) -> dict[str, np.ndarray]:
    """Cityscapes: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` + gtFine labelIds."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split in splits:
        for city in cities:
            for s in range(per_city):
                stem = f"{city}_{s:06d}_000019"
                ids = _ids(rng, _CS_POOL)
                write_rgb(
                    root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image_for(ids)
                )
                write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
                rel = f"gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png"
                expected[rel] = _expect(ids, CITYSCAPES_ID_TO_TRAINID)
    return expected


def make_cityscapes_seq(
    root: Path,
    split: str = "train",
    city: str = "aachen",
    seqs=(0, 1),
    start: int = 0,
    seed: int = 3,
) -> dict[str, np.ndarray]:
    """Cityscapes-Seq: 30-frame snippets in ``leftImg8bit_sequence``; gtFine on the 20th frame.

    Frame ``k`` of a snippet has ``R = 10 * (k % 20) + seq`` everywhere so tests can tell frames apart.
    """
    rng = np.random.default_rng(seed)
    expected = {}
    for seq in seqs:
        for k in range(30):
            frame = start + k
            rgb = np.zeros((H, W, 3), dtype=np.uint8)
            rgb[..., 0] = frame % 200 + seq
            name = f"{city}_{seq:06d}_{frame:06d}_leftImg8bit.png"
            write_rgb(root / "leftImg8bit_sequence" / split / city / name, rgb)
        key = start + 19
        ids = _ids(rng, _CS_POOL)
        stem = f"{city}_{seq:06d}_{key:06d}"
        write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
        expected[f"gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png"] = _expect(
            ids, CITYSCAPES_ID_TO_TRAINID
        )
    return expected


def make_acdc(
    root: Path, conditions=("fog", "night", "rain", "snow"), splits=("train", "val"),
    ship_train_ids: bool = False, seed: int = 4,
) -> dict[str, np.ndarray]:  # fmt: skip
    """ACDC: ``rgb_anon/<cond>/<split>/<seq>/<seq>_frame_<n>_rgb_anon.png`` + ``gt/..._gt_labelIds.png``."""
    rng = np.random.default_rng(seed)
    expected = {}
    for cond in conditions:
        for split in splits:
            seq = f"GOPR04{len(cond)}{len(split)}"
            for n in (41, 97):
                stem = f"{seq}_frame_{n:06d}"
                ids = _ids(rng, _CS_POOL)
                write_rgb(
                    root / "rgb_anon" / cond / split / seq / f"{stem}_rgb_anon.png", image_for(ids)
                )
                gt = root / "gt" / cond / split / seq
                write_gray(gt / f"{stem}_gt_labelIds.png", ids)
                exp = _expect(ids, CITYSCAPES_ID_TO_TRAINID)
                if ship_train_ids:
                    write_gray(gt / f"{stem}_gt_labelTrainIds.png", exp)
                expected[f"gt/{cond}/{split}/{seq}/{stem}_gt_labelTrainIds.png"] = exp
    return expected


def make_darkzurich(root: Path, seed: int = 5) -> dict[str, np.ndarray]:
    """Dark Zurich: unlabelled ``rgb_anon/train/night``; ``rgb_anon/val/night`` + ``gt/val/night``."""
    rng = np.random.default_rng(seed)
    for n in range(3):
        ids = _ids(rng, _CS_POOL)
        write_rgb(
            root
            / "rgb_anon"
            / "train"
            / "night"
            / "GOPR0351"
            / f"GOPR0351_frame_{n:06d}_rgb_anon.png",
            image_for(ids),
        )
    expected = {}
    for n in (321, 322):
        stem = f"GOPR0356_frame_{n:06d}"
        ids = _ids(rng, _CS_POOL)
        write_rgb(
            root / "rgb_anon" / "val" / "night" / "GOPR0356" / f"{stem}_rgb_anon.png",
            image_for(ids),
        )
        write_gray(root / "gt" / "val" / "night" / "GOPR0356" / f"{stem}_gt_labelIds.png", ids)
        expected[f"gt/val/night/GOPR0356/{stem}_gt_labelTrainIds.png"] = _expect(
            ids, CITYSCAPES_ID_TO_TRAINID
        )
    return expected


def make_viper(
    root: Path, split: str = "train", seqs=("001", "002"), frames=range(0, 5), labelled=(1, 3),
    seed: int = 6, ext: str = ".png",
) -> dict[str, np.ndarray]:  # fmt: skip
    """VIPER: ``<split>/img/<seq>/<seq>_<frame>.png|jpg``; palette ``cls`` PNGs on ``labelled`` frames.

    Frame ``f`` image has ``R = 10 * f + int(seq)`` everywhere.
    """
    rng = np.random.default_rng(seed)
    expected = {}
    for seq in seqs:
        for f in frames:
            rgb = np.zeros((H, W, 3), dtype=np.uint8)
            rgb[..., 0] = 10 * f + int(seq)
            write_rgb(root / split / "img" / seq / f"{seq}_{f:05d}{ext}", rgb)
            if f in labelled:
                ids = _ids(rng, [0, 1, 2, 3, 4, 7, 8, 9, 20, 24, 25, 29, 31])
                write_palette(
                    root / split / "cls" / seq / f"{seq}_{f:05d}.png", ids, list(VIPER_PALETTE)
                )
                rel = f"{split}/cls/{seq}/{seq}_{f:05d}_labelTrainIds.png"
                expected[rel] = _expect(ids, VIPER_ID_TO_TRAINID)
    return expected


def make_synthia_seq(
    root: Path, sequence: str = "SYNTHIA-SEQS-04-DAWN", n: int = 4, seed: int = 7
) -> dict[str, np.ndarray]:
    """SYNTHIA-SEQS: ``<seq>/RGB/Stereo_Left/Omni_F/000000.png`` + 16-bit ``GT/LABELS/...`` (id in R)."""
    rng = np.random.default_rng(seed)
    expected = {}
    cam = Path("Stereo_Left") / "Omni_F"
    for i in range(n):
        ids = _ids(rng, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 15, 13])
        rgb = image_for(ids)
        rgb[..., 1] = 10 * i  # frame marker
        write_rgb(root / sequence / "RGB" / cam / f"{i:06d}.png", rgb)
        write_synthia_label(root / sequence / "GT" / "LABELS" / cam / f"{i:06d}.png", ids)
        rel = f"{sequence}/GT/LABELS/Stereo_Left/Omni_F/{i:06d}_labelTrainIds.png"
        expected[rel] = _expect(ids, SYNTHIA_SEQ_ID_TO_TRAINID)
    return expected


def make_all_prepared(root: Path) -> Path:
    """Every real benchmark's fixture tree under ``root`` (the preset layout), prepared.

    GTA5, SYNTHIA, Cityscapes with the sequences behind its gtFine frames, ACDC,
    Dark Zurich, VIPER and SYNTHIA-Seq, each converted by the preparation command.
    """
    from pipa_core.data.prepare import prepare

    make_gta(root / "gta", n=3)
    make_synthia(root / "synthia", n=3)
    make_cityscapes(root / "cityscapes", per_city=1)
    for split in ("train", "val"):
        for city in ("aachen", "zurich"):
            make_cityscapes_seq(root / "cityscapes", split=split, city=city, seqs=(0,))
    make_acdc(root / "acdc")
    make_darkzurich(root / "dark_zurich")
    make_viper(root / "viper", frames=range(0, 3), labelled=(1, 2))
    make_synthia_seq(root / "synthia_seq", n=3)
    for name, sub in [("gta", "gta"), ("synthia", "synthia"), ("cityscapes", "cityscapes"),
                      ("acdc", "acdc"), ("darkzurich", "dark_zurich"), ("viper", "viper"),
                      ("synthia_seq", "synthia_seq")]:  # fmt: skip
        prepare(name, root / sub, progress=False)
    return root
