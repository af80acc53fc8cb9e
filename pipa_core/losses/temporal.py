"""Temporal contrast (PiPa++): the same pixel location in a key and a reference frame.

Without optical flow, the feature at location ``(y, x)`` of the key frame and
the feature at the same ``(y, x)`` of a nearby reference frame form the
positive pair; features at other locations (of both frames and of the other
clips in the batch) and optional memory-bank entries are negatives. The loss
is symmetric in the two frames (:mod:`pipa_core.losses.location`).
"""

from __future__ import annotations

import torch

from pipa_core.losses.location import LocationContrastLoss, location_contrast


class TemporalContrastLoss(LocationContrastLoss):
    """PiPa++ temporal contrastive loss.

    Args:
        temperature: tau (0.1, as the PiPa code; the PiPa++ summary gives none).
        max_locations: locations sampled per call (``None``: all ``B*h*w``).
        num_negatives: extra negatives from the non-sampled locations of both
            frames (``None``: all, 0: none beyond the other sampled locations).
        memory_bank: optional :class:`ClassMemoryBank` (``num_classes=1``) of past negatives.
        chunk_size: anchor rows per InfoNCE chunk.
    """

    def forward(
        self,
        emb_key: torch.Tensor,
        emb_ref: torch.Tensor,
        valid: torch.Tensor | None = None,
        update_bank: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Loss for key and reference embeddings, both (B, E, h, w).

        ``valid`` (B, h, w) bool optionally restricts which locations can be
        positives (e.g. to drop padding); all locations still serve as negatives.
        """
        if emb_key.dim() != 4 or emb_key.shape != emb_ref.shape:
            raise ValueError(
                "TemporalContrastLoss: emb_key and emb_ref must both be (B, E, h, w), got "
                f"{tuple(emb_key.shape)} and {tuple(emb_ref.shape)}"
            )
        b, e, h, w = emb_key.shape
        loc = torch.arange(b * h * w, device=emb_key.device)
        if valid is not None:
            if valid.shape != (b, h, w):
                raise ValueError(
                    f"TemporalContrastLoss: valid must be ({b}, {h}, {w}), got {tuple(valid.shape)}"
                )
            loc = loc[valid.reshape(-1).to(loc.device)]
        return location_contrast(
            emb_key.permute(0, 2, 3, 1).reshape(-1, e),
            emb_ref.permute(0, 2, 3, 1).reshape(-1, e),
            loc,
            loc,
            temperature=self.temperature,
            max_locations=self.max_locations,
            num_negatives=self.num_negatives,
            memory_bank=self.memory_bank,
            update_bank=update_bank and self.training,
            chunk_size=self.chunk_size,
            generator=generator,
        )
