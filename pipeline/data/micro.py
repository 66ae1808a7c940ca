"""A micro-expression samples table as tensors, and its (augmented) batches for fine-tuning and probing."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from pipeline.data.tensors import PairAugmentation, images_to_tensor, iterate_batches, normalise
from pipeline.face.optical_flow import resize_flow
from pipeline.io import decode_array

__all__ = ["MicroTensors"]


class MicroTensors:
    """A samples table's inputs as tensors, and batches of them.

    Attributes:
        onset, apex: ``(N, 3, S, S) uint8`` RGB crops at ``size_px``.
        flow: ``(N, 3, S, S) float32`` onset → apex optical flow (u, v in px of the S grid, optical strain) when
            the table has a ``flow`` column (``micro.optical_flow: tvl1``), else None.
        label: ``(N,) int64``.
    """

    def __init__(self, samples: pd.DataFrame, size_px: int):
        self.onset = images_to_tensor(samples["onset_image"].tolist(), size_px)
        self.apex = images_to_tensor(samples["apex_image"].tolist(), size_px)
        self.flow = None
        if "flow" in samples:
            flow = torch.from_numpy(np.stack([decode_array(cell) for cell in samples["flow"]]).astype(np.float32))
            self.flow = resize_flow(flow, size_px)  # (N, 3, S, S)
        self.label = torch.tensor(samples["label"].to_numpy(), dtype=torch.int64)  # a copy: pandas arrays are read-only

    def batches(self, rows: np.ndarray, batch_size: int, generator: torch.Generator | None,
                augment: PairAugmentation | None = None,
                flow_size_px: int | None = None, with_flow: bool = True) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of the samples at ``rows``, shuffled by ``generator`` (in order when None).

        Each batch: ``onset``, ``apex``: ``(B, 3, S, S) float32`` ImageNet-normalised; ``flow`` (when present):
        ``(B, 3, F, F) float32`` with F = ``flow_size_px`` (default S; u, v rescaled to px of that grid);
        ``label``: ``(B,)``. ``augment`` warps a sample's onset, apex and flow alike. ``with_flow=False`` leaves
        the flow out (a model that does not read it; the augmentation draws the same random numbers).
        """
        rows = torch.as_tensor(rows)
        for batch in iterate_batches(len(rows), batch_size, generator):
            pick = rows[batch]
            frames = torch.cat([normalise(self.onset[pick]), normalise(self.apex[pick])], dim=1)  # (B, 6, S, S)
            flow = None if self.flow is None or not with_flow else self.flow[pick]
            if augment is not None:
                frames, flow = augment(frames, flow)
            out = {"onset": frames[:, :3], "apex": frames[:, 3:], "label": self.label[pick]}
            if flow is not None:
                out["flow"] = resize_flow(flow, flow_size_px) if flow_size_px else flow
            yield out
