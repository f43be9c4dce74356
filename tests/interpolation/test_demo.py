import pytest

from videostate.interpolation.demo import interpolation_demo, moving_square_pair


def test_demo_rows():
    rows = interpolation_demo(height=16, width=16)
    assert [r["mode"] for r in rows] == ["phase 1, 16x16", "phase 2, 16x16"]
    for row in rows:
        assert row["max_abs_diff"] < 1e-4 and row["tokens_per_s"] > 0
        assert row["psnr_frame_average"] == rows[0]["psnr_frame_average"] < 100
    with pytest.raises(ValueError, match="height and width must be positive"):
        interpolation_demo(height=0)


def test_moving_square_middle_frame_is_between():
    img0, gt, img1 = moving_square_pair(16, 32, seed=1)
    assert not (img0 == gt).all() and not (gt == img1).all()
    assert (gt == 1.0).sum() == (img0 == 1.0).sum() == 3 * 16  # a 4x4 square in 3 channels
