"""COCO RLE: hand-computed strings, a loop oracle for run lengths, round trips, polygons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from videostate.segmentation import rle


def runs_by_loop(mask: np.ndarray) -> list[int]:
    """Column-major runs starting with 0s, by walking the pixels one by one."""
    counts, current, run = [], False, 0
    for x in range(mask.shape[1]):
        for y in range(mask.shape[0]):
            if bool(mask[y, x]) != current:
                counts.append(run)
                current, run = not current, 0
            run += 1
    counts.append(run)
    return counts


def test_hand_computed_strings():
    assert rle.counts_to_string([1, 3]) == "13"
    assert rle.counts_to_string([5, 2, 3, 1]) == "523O"  # 1 - 2 = -1: one group 31 -> chr(79)
    assert rle.counts_to_string([100]) == "T3"  # 100 = 4 + 3 * 32: "4 | continue" then "3"
    assert rle.encode(np.array([[0, 1], [1, 1]])) == {"size": [2, 2], "counts": "13"}
    assert rle.string_to_counts("523O") == [5, 2, 3, 1]


def test_runs_and_round_trip_on_random_masks():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 5), (17, 9), (40, 33)]:
        for density in (0.0, 0.1, 0.5, 1.0):
            mask = rng.random(shape) < density
            counts = rle.mask_to_counts(mask)
            assert counts == runs_by_loop(mask)
            encoded = rle.encode(mask)
            assert rle.string_to_counts(encoded["counts"]) == counts
            assert np.array_equal(rle.decode(encoded), mask)
            assert np.array_equal(rle.decode({"size": list(shape), "counts": counts}), mask)
            assert rle.area(encoded) == mask.sum()


def test_polygon_and_errors():
    square = rle.decode([[1, 1, 4, 1, 4, 3, 1, 3]], height=6, width=6)
    expected = np.zeros((6, 6), dtype=bool)
    expected[1:4, 1:5] = True
    assert np.array_equal(square, expected)
    with pytest.raises(ValueError, match="height and width"):
        rle.decode([[0, 0, 1, 0, 1, 1]])
    with pytest.raises(ValueError, match="size 2x2"):
        rle.decode({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(TypeError, match="RLE dict"):
        rle.decode("13")
    with pytest.raises(ValueError, match="2-D"):
        rle.mask_to_counts(np.zeros((2, 2, 2)))


SAMPLE = Path("../shared/data/segmentation/demo_vis_data")


@pytest.mark.skipif(not SAMPLE.exists(), reason="sample data folder ../shared/data is absent")
def test_pycocotools_files_round_trip_bit_exactly():
    """A compressed mask written by pycocotools re-encodes to the same string; the uncompressed
    annotation's area and bounding box match the file's."""
    results = json.loads((SAMPLE / "results.json").read_text())
    written = results["track_masks"][0][0][0]
    assert rle.encode(rle.decode(written))["counts"] == written["counts"]
    ann = json.loads((SAMPLE / "ann.json").read_text())["annotations"][0]
    mask = rle.decode(ann["segmentation"])
    ys, xs = np.nonzero(mask)
    assert mask.sum() == ann["area"]
    assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == ann["bbox"]
