"""The VidEoMT demo rows: chunked and stepped runs agree with the offline clip."""

from __future__ import annotations

import pytest

from videostate.segmentation.demo import segmentation_demo


def test_demo_rows_agree_with_offline():
    rows = segmentation_demo(frames=5, chunk=2, image_size=32)
    assert [r["mode"] for r in rows] == ["offline clip", "chunks of 2", "step by step"]
    assert all(r["frames_per_s"] > 0 for r in rows)
    assert all(r["max_abs_diff"] < 1e-4 for r in rows)
    with pytest.raises(ValueError, match="chunk"):
        segmentation_demo(chunk=0)
