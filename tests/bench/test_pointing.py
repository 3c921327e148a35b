"""bench/pointing.py's pointing score: a map points where its best cell is, border cells included."""

from __future__ import annotations

import numpy as np

from bench.pointing import coverage, score
from tasks.config import HeatmapConfig
from tasks.localize.regions import boxes_mask


def test_a_map_points_at_the_centre_of_its_best_cell_even_on_the_grids_border():
    # An upper-right lesion box of the grounding data: its best-covered cell is on the 4 x 4 grid's border,
    # where the smoothed map's maximum sat on the image's outermost column, outside every box.
    box = boxes_mask([[19, 3, 31, 15]], 32, 32)
    hit, iou = score(coverage(box, 4), box, HeatmapConfig())
    assert hit and iou > 0.3
    relevance = np.zeros((4, 4), dtype=np.float32)
    relevance[3, 0] = 1.0
    assert not score(relevance, box, HeatmapConfig())[0]


def test_a_flat_map_points_nowhere():
    box = boxes_mask([[1, 1, 13, 13]], 32, 32)
    assert score(np.ones((4, 4), dtype=np.float32), box, HeatmapConfig()) == (False, 0.0)
