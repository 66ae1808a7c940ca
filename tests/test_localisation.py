"""Localisation scores of heat maps against ground-truth AU regions (pipeline.evaluate.localisation), with known
answers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.evaluate.localisation import (
    grid_pointing,
    localisation_scores,
    mask_path,
    read_region,
    region_in_crop,
    summarise_localisation,
)
from pipeline.face.video import crop_matrix


def test_mass_pointing_and_chance_on_a_known_map():
    region = np.zeros((10, 10), bool)
    region[2:4, 5:10] = True  # 10 of 100 px: chance 0.1
    heat = np.zeros((10, 10))
    heat[3, 6] = 6.0  # inside
    heat[8, 1] = 2.0  # outside
    scores = localisation_scores(heat, region)
    assert scores == {"mass_in_region": pytest.approx(0.75), "pointing_hit": True, "region_share": 0.1,
                      "flat": False}
    heat[8, 1] = 9.0  # now the maximum is outside
    assert localisation_scores(heat, region)["pointing_hit"] is False
    assert localisation_scores(heat, region)["mass_in_region"] == pytest.approx(0.4)


def test_a_uniform_map_scores_chance_and_a_flat_map_is_counted():
    region = np.zeros((8, 8), bool)
    region[:2] = True
    assert localisation_scores(np.ones((8, 8)), region)["mass_in_region"] == pytest.approx(0.25)
    flat = localisation_scores(np.zeros((8, 8)), region)
    assert flat == {"mass_in_region": 0.25, "pointing_hit": False, "region_share": 0.25, "flat": True}


def test_bad_inputs_are_refused():
    region = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="differ in shape"):
        localisation_scores(np.ones((3, 3)), region)
    with pytest.raises(ValueError, match=">= 0"):
        localisation_scores(-np.ones((4, 4)), region)
    with pytest.raises(ValueError, match="empty"):
        localisation_scores(np.ones((4, 4)), np.zeros((4, 4), bool))


def test_the_mask_is_mapped_into_the_crop_with_the_samples_matrix(tmp_path):
    mask = np.zeros((128, 128), np.uint8)
    mask[40:60, 80:100] = 255  # px of the frame
    # the clip's crop: the square (32, 32)-(96, 96) of the frame, scaled to 32 px (zoom 0.5), as ingest_micro stores it
    matrix = crop_matrix((32.0, 32.0, 64.0, 64.0), 1.0, 32).ravel().tolist()
    region = region_in_crop(mask, matrix, 32)
    assert region.shape == (32, 32) and region.dtype == bool
    rows, cols = np.nonzero(region)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 13, 24, 31)  # (40-32)/2 .. ; clipped at the edge
    path = mask_path(tmp_path, "casme2/sub01", "EP02_01f")
    assert path == tmp_path / "ground_truth_au_masks" / "sub01_EP02_01f.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), mask)
    assert np.array_equal(read_region(path, matrix, 32), region)
    with pytest.raises(FileNotFoundError, match=r"sub02_EP01_01\.png"):
        read_region(mask_path(tmp_path, "casme2/sub02", "EP01_01"), matrix, 32)


def test_summary_over_seeds_pairs_the_arms():
    rows = []
    for arm, masses in (("ma2mi", {0: [0.6, 0.8], 1: [0.5, 0.5]}), ("scratch", {0: [0.2, 0.4], 1: [0.3, 0.3]})):
        for seed, values in masses.items():
            for clip, mass in enumerate(values):
                rows.append({"arm": arm, "seed": seed, "clip": clip, "mass_in_region": mass,
                             "pointing_hit": mass > 0.45, "region_share": [0.1, 0.3][clip], "flat": False})
    summary = summarise_localisation(pd.DataFrame(rows))
    assert summary["ma2mi"]["mass_in_region"] == pytest.approx(0.6)  # seeds 0.7 and 0.5
    assert summary["ma2mi"]["mass_in_region_std"] == pytest.approx(np.std([0.7, 0.5], ddof=1))
    assert summary["ma2mi"]["pointing_hit_rate"] == pytest.approx(1.0)
    assert summary["scratch"]["pointing_hit_rate"] == pytest.approx(0.0)
    assert summary["ma2mi"]["seeds"] == 2 and summary["ma2mi"]["clips"] == 2
    assert summary["chance"] == {"mass_in_region": pytest.approx(0.2), "pointing_hit_rate": pytest.approx(0.2),
                                 "clips": 2}
    assert summary["ma2mi_minus_scratch"]["mass_in_region"] == pytest.approx(0.3)  # (0.7-0.3 + 0.5-0.3) / 2


def test_the_pointing_game_on_the_maps_own_grid():
    region = np.zeros((64, 64), bool)
    region[20:24, 40:46] = True  # inside the 4 x 4 grid's cell (1, 2) (rows 16-31, columns 32-47)
    coarse = np.zeros((4, 4))
    coarse[1, 2] = 1.0
    assert grid_pointing(coarse, region) == {"grid": "4x4", "grid_pointing_hit": True, "grid_region_share": 1 / 16}
    # bilinearly resized to the crop, that map's maximum lies at the cell's centre (24, 40): here outside the region
    assert not localisation_scores(cv2.resize(coarse, (64, 64), interpolation=cv2.INTER_LINEAR), region)["pointing_hit"]
    coarse[1, 2], coarse[3, 3] = 0.5, 1.0
    assert not grid_pointing(coarse, region)["grid_pointing_hit"]
    assert not grid_pointing(np.zeros((10, 10)), region)["grid_pointing_hit"]  # a flat map misses
    fine = grid_pointing(np.eye(10), region)  # 6.4 px cells: rows 20-23 in cell 3, columns 40-45 in cells 6 and 7
    assert fine["grid"] == "10x10" and fine["grid_region_share"] == pytest.approx(2 / 100)
    rows = [{"arm": arm, "seed": seed, "mass_in_region": 0.5, "pointing_hit": False, "region_share": 0.1,
             "flat": False, "grid": grid, "grid_pointing_hit": hit, "grid_region_share": share}
            for arm, grid, share in (("ma2mi", "4x4", 0.25), ("ststnet", "10x10", 0.05))
            for seed, hit in ((0, True), (1, False))]
    summary = summarise_localisation(pd.DataFrame(rows))
    assert summary["ma2mi"]["grid"] == "4x4" and summary["ma2mi"]["grid_chance"] == pytest.approx(0.25)
    assert summary["ststnet"]["grid_chance"] == pytest.approx(0.05)
    assert summary["ma2mi"]["grid_pointing_hit_rate"] == pytest.approx(0.5)
    assert summary["ma2mi"]["grid_pointing_hit_rate_std"] == pytest.approx(np.std([1.0, 0.0], ddof=1))


def test_the_demo_writes_masks_where_localisation_looks_for_them():
    """The renderer writes ``<micro root>/<AU_MASK_DIR>/<subject>_<clip>.png`` (tests/test_synth.py reads them there);
    localisation looks in the same place."""
    from pipeline.config import AU_MASK_DIR

    path = Path(mask_path(Path("root"), "casme2/sub03", "EP01_02"))
    assert path == Path("root") / AU_MASK_DIR / "sub03_EP01_02.png"
