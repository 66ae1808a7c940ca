"""Does a heat map point at the skin that moved? Localisation scores against the demo's ground-truth AU regions.

The demo renderer knows where each clip's action units move the skin (``ground_truth_au_masks/<subject>_<clip>.png``
under the micro root, px of the clip's frames; DESIGN §8); no adapter reads it. A sample's ``crop_matrix`` maps
frame px to the aligned crop, so the region in the crop is the mask warped by it (nearest neighbour, 0 outside
the frame). Two scores per clip:

- **mass in region**: the share of the heat map's total mass that lies inside the region (Grad-CAM "energy-based
  pointing", Wang et al., Score-CAM, CVPR-W 2020). A map spread evenly scores the region's share of the crop:
  that is the **chance level**.
- **pointing game** (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016): a hit when the
  heat map's maximum lies inside the region. Chance level: the region's share of the crop again (a maximum at a
  uniformly random pixel).

The pointing game on the crop's pixels asks a coarse map for more than it has: MIACNet's map is 4 x 4 at 64 px
(``H/16``), STSTNet's 10 x 10, MMNet's 14 x 14, each resized bilinearly to the crop, so a 4 x 4 map's maximum
can only fall near one of 16 cell centres. The **grid pointing game** (:func:`grid_pointing`) scores the map on its
own grid instead: a hit when the cell of its maximum overlaps the region; its chance level is the share of the
cells that overlap the region, per model.

A heat map that is zero everywhere (no positive evidence for the class) carries no location: it scores the
chance level on mass and a miss on the pointing game, and is counted (``flat``).

Example:
    >>> import numpy as np
    >>> region = np.zeros((4, 4), bool)
    >>> region[:2, :2] = True
    >>> heat = np.zeros((4, 4))
    >>> heat[0, 0], heat[3, 3] = 3.0, 1.0
    >>> localisation_scores(heat, region)
    {'mass_in_region': 0.75, 'pointing_hit': True, 'region_share': 0.25, 'flat': False}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.config import AU_MASK_DIR
from pipeline.evaluate.metrics import seed_summary

__all__ = ["LOCALISATION_SCORES", "grid_pointing", "localisation_scores", "mask_path", "read_region",
           "region_in_crop", "summarise_localisation"]

LOCALISATION_SCORES = ("mass_in_region", "pointing_hit_rate")


def mask_path(micro_root: Path, subject: str, clip: str) -> Path:
    """The ground-truth mask file of a sample: ``<root>/ground_truth_au_masks/<subject>_<clip>.png``.

    ``subject`` may be namespaced (``casme2/sub01``): the part after the last ``/`` names the file.

    >>> mask_path(Path("data/demo/micro"), "casme2/sub01", "EP02_01f").as_posix()
    'data/demo/micro/ground_truth_au_masks/sub01_EP02_01f.png'
    """
    return micro_root / AU_MASK_DIR / f"{subject.rsplit('/', 1)[-1]}_{clip}.png"


def region_in_crop(mask: np.ndarray, matrix: Sequence[float] | np.ndarray, size_px: int) -> np.ndarray:
    """The ground-truth region in the aligned crop.

    Args:
        mask: ``(H, W)`` uint8, non-zero inside the region, px of the clip's frames.
        matrix: the sample's ``crop_matrix``: 6 floats (row-major ``(2, 3)``), frame px -> crop px.
        size_px: the crop's side S.

    Returns:
        ``(S, S) bool``: nearest-neighbour warp, False outside the frame.

    Raises:
        ValueError: ``mask`` is not 2-D or ``matrix`` does not hold 6 numbers.
    """
    matrix = np.asarray(matrix, np.float64)
    if mask.ndim != 2 or matrix.size != 6:
        raise ValueError(f"need an (H, W) mask and a (2, 3) matrix, got {mask.shape} and {matrix.shape}")
    warped = cv2.warpAffine((mask > 0).astype(np.uint8), matrix.reshape(2, 3), (size_px, size_px),
                            flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped > 0


def read_region(path: Path, matrix: Sequence[float] | np.ndarray, size_px: int) -> np.ndarray:
    """:func:`region_in_crop` of the mask file ``path``.

    Raises:
        FileNotFoundError: no such mask (the message names it).
        ValueError: the file is not a readable image (named).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ground-truth AU mask missing")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"{path}: not a readable mask image")
    return region_in_crop(mask, matrix, size_px)


def localisation_scores(heatmap: np.ndarray, region: np.ndarray) -> dict[str, float | bool]:
    """Mass in region, pointing-game hit and chance level of one heat map.

    Args:
        heatmap: ``(S, S)`` float >= 0.
        region: ``(S, S)`` bool, the ground-truth region in the crop.

    Returns:
        ``mass_in_region`` (in [0, 1]), ``pointing_hit`` (the maximum inside the region; ties: the first maximum
        in row-major order), ``region_share`` (the chance level), ``flat`` (the map is zero everywhere: mass =
        chance, no hit).

    Raises:
        ValueError: shapes differ, negative heat, or an empty region.
    """
    heatmap = np.asarray(heatmap, np.float64)
    if heatmap.shape != region.shape:
        raise ValueError(f"heat map {heatmap.shape} and region {region.shape} differ in shape")
    if (heatmap < 0).any():
        raise ValueError("a heat map is >= 0 everywhere (Grad-CAM after its ReLU, attention)")
    share = float(region.mean())
    if share == 0:
        raise ValueError("the ground-truth region is empty in the crop (the AU moved skin outside it?)")
    total = float(heatmap.sum())
    if total <= 0:
        return {"mass_in_region": share, "pointing_hit": False, "region_share": share, "flat": True}
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return {"mass_in_region": float(heatmap[region].sum() / total), "pointing_hit": bool(region[peak]),
            "region_share": share, "flat": False}


def grid_pointing(grid_map: np.ndarray, region: np.ndarray) -> dict[str, float | bool | str]:
    """The pointing game on the heat map's own grid.

    Args:
        grid_map: ``(h, w)`` float >= 0, the map before any resize; its cells tile the whole crop.
        region: ``(S, S)`` bool, the ground-truth region in the crop.

    Returns:
        ``grid`` (``'<h>x<w>'``), ``grid_pointing_hit`` (the block of the crop under the map's maximum cell holds a
        region pixel; a map that is zero everywhere misses) and ``grid_region_share`` (the share of the cells
        whose block holds a region pixel: the chance level of a maximum in a random cell).

    Example:
        >>> region = np.zeros((8, 8), bool)
        >>> region[0, 7] = True  # one pixel, in the top-right cell of a 2 x 2 grid
        >>> grid_pointing(np.array([[0.0, 1.0], [0.5, 0.0]]), region)
        {'grid': '2x2', 'grid_pointing_hit': True, 'grid_region_share': 0.25}
    """
    grid_map = np.asarray(grid_map, np.float64)
    h, w = grid_map.shape
    coverage = cv2.resize(region.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)  # region share per cell
    touched = coverage > 0
    hit = bool(grid_map.max() > 0 and touched[np.unravel_index(int(np.argmax(grid_map)), grid_map.shape)])
    return {"grid": f"{h}x{w}", "grid_pointing_hit": hit, "grid_region_share": float(touched.mean())}


def summarise_localisation(per_clip: pd.DataFrame) -> dict:
    """Per arm: the means over clips for each seed, then mean ± std over seeds; the paired MA2MI − scratch.

    Args:
        per_clip: one row per arm label, seed and held-out clip: ``arm``, ``seed``, ``mass_in_region``,
            ``pointing_hit``, ``region_share``, ``flat``.

    Returns:
        ``{<arm>: {mass_in_region, mass_in_region_std, pointing_hit_rate, pointing_hit_rate_std, seeds, clips,
        flat}, 'chance': {mass_in_region, pointing_hit_rate, clips}, 'ma2mi_minus_scratch': {...}}`` (the paired
        difference only when both arms are present); std is None for one seed. With the grid columns of
        :func:`grid_pointing` in ``per_clip``, each arm also has ``grid``, ``grid_pointing_hit_rate`` (+ std) and
        its own ``grid_chance`` (grids differ between models).
    """
    with_grid = "grid_pointing_hit" in per_clip
    per_seed = (per_clip.groupby(["arm", "seed"], sort=False)
                .agg(mass_in_region=("mass_in_region", "mean"), pointing_hit_rate=("pointing_hit", "mean"),
                     clips=("mass_in_region", "size"), flat=("flat", "sum"),
                     **({"grid_pointing_hit_rate": ("grid_pointing_hit", "mean"),
                         "grid_chance": ("grid_region_share", "mean"), "grid": ("grid", "first")} if with_grid else {}))
                .reset_index())
    out: dict = {}
    for arm, part in per_seed.groupby("arm", sort=False):
        out[arm] = {**seed_summary(part, columns=LOCALISATION_SCORES), "clips": int(part["clips"].iloc[0]),
                    "flat": int(part["flat"].sum())}
        if with_grid:
            grid = seed_summary(part, columns=["grid_pointing_hit_rate"])
            out[arm].update(grid=str(part["grid"].iloc[0]), grid_chance=float(part["grid_chance"].mean()),
                            grid_pointing_hit_rate=grid["grid_pointing_hit_rate"],
                            grid_pointing_hit_rate_std=grid["grid_pointing_hit_rate_std"])
    # the regions are the same for every arm and seed: the chance level of one (arm, seed) is everyone's
    first = per_clip.iloc[0]
    clips = per_clip[(per_clip["arm"] == first["arm"]) & (per_clip["seed"] == first["seed"])]
    share = float(clips["region_share"].mean())
    out["chance"] = {"mass_in_region": share, "pointing_hit_rate": share, "clips": len(clips)}
    if {"ma2mi", "scratch"} <= set(per_seed["arm"]):
        paired = per_seed.pivot(index="seed", columns="arm", values=list(LOCALISATION_SCORES))
        out["ma2mi_minus_scratch"] = seed_summary(
            pd.DataFrame({s: paired[s]["ma2mi"] - paired[s]["scratch"] for s in LOCALISATION_SCORES}),
            columns=LOCALISATION_SCORES)
    return out
