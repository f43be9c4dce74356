import math
from pathlib import Path

import numpy as np
import pytest
import torch

from videostate.interpolation import HybridVFI
from videostate.interpolation.benchmarks import (
    frame_average,
    middlebury_other,
    model_interpolator,
    run_benchmark,
    snu_film,
    ucf101,
    vimeo90k,
    xtest,
)
from videostate.interpolation.data import read_rgb
from videostate.metrics import ssim_matlab

from .synthetic import moving_square_clip, write_png, write_vimeo
from .tiny import tiny_config

SHARED_VFI = Path("../shared/data/vfi")


class Recorder:
    """An interpolator that records its calls and returns the frame average."""

    def __init__(self):
        self.calls = []

    def __call__(self, img0, img1, timestep, flow_scale=1.0):
        self.calls.append((tuple(img0.shape), timestep, flow_scale))
        return frame_average(img0, img1, timestep)


def direct_psnr(pred, gt):
    return -10 * math.log10(float(np.mean((gt.numpy().astype(np.float64) - pred.numpy()) ** 2)))


def test_vimeo_float_psnr_and_ssim_matlab(tmp_path):
    root = write_vimeo(tmp_path, count=0, size=16, test_count=3)
    result = vimeo90k(root, frame_average)
    psnrs, ssims = [], []
    for name in (root / "tri_testlist.txt").read_text().split():
        i0, gt, i1 = (read_rgb(root / "sequences" / name / f"im{k}.png")[None] for k in (1, 2, 3))
        pred = (i0 + i1) / 2
        psnrs.append(direct_psnr(pred, gt))
        ssims.append(float(ssim_matlab(pred, gt)))
    assert result == pytest.approx({"psnr": np.mean(psnrs), "ssim": np.mean(ssims), "samples": 3})
    assert vimeo90k(root, frame_average, limit=1)["samples"] == 1


def test_ucf101_rounds_the_prediction_to_8_bit(tmp_path):
    for n in range(2):
        clip = moving_square_clip(3, 16, seed=n)
        clip[0, 0, 0] = 3  # (3 + x) / 2 is not an integer level
        for k, name in enumerate(("frame_00", "frame_01_gt", "frame_02")):
            write_png(tmp_path / str(n) / f"{name}.png", clip[k])
    result = ucf101(tmp_path, frame_average)
    psnrs = []
    for n in range(2):
        i0, gt, i1 = (
            read_rgb(tmp_path / str(n) / f"{name}.png")[None] for name in ("frame_00", "frame_01_gt", "frame_02")
        )
        pred = torch.round((i0 + i1) / 2 * 255) / 255
        psnrs.append(direct_psnr(pred, gt))
    assert result["psnr"] == pytest.approx(np.mean(psnrs))
    with pytest.raises(ValueError, match="no UCF101 triplet"):
        ucf101(tmp_path / "0", frame_average)


def test_snu_film_levels_use_half_resolution_flow(tmp_path):
    for level in ("easy", "hard"):
        clip = moving_square_clip(3, 16, seed=len(level))
        paths = [f"frames/{level}/{k}.png" for k in range(3)]
        for k, p in enumerate(paths):
            write_png(tmp_path / p, clip[k])
        (tmp_path / f"test-{level}.txt").write_text(" ".join(paths) + "\n")
    recorder = Recorder()
    result = snu_film(tmp_path, recorder, levels=("easy", "hard"))
    assert set(result) == {"easy", "hard"} and all(r["samples"] == 1 for r in result.values())
    assert [c[1:] for c in recorder.calls] == [(0.5, 0.5), (0.5, 0.5)]
    with pytest.raises(ValueError, match="levels are"):
        snu_film(tmp_path, recorder, levels=("easiest",))


def test_xtest_8x_by_recursive_halving(tmp_path):
    """Frames of intensity 7 i: recursive averaging of frames 0 and 32 reproduces every 4th frame exactly."""
    scene = tmp_path / "Type1" / "TEST01"
    for i in range(33):
        write_png(scene / f"{i:04d}.png", np.full((12, 12, 3), 7 * i, np.uint8))
    recorder = Recorder()
    result = xtest(tmp_path, recorder, mode="4k")
    assert result["samples"] == 1 and result["psnr"] == math.inf
    assert len(recorder.calls) == 7 and all(c[1:] == (0.5, 0.25) for c in recorder.calls)


def test_middlebury_uses_a_480x640_canvas_and_8_bit_interpolation_error(tmp_path):
    clip = moving_square_clip(3, 20, seed=5)
    write_png(tmp_path / "other-data" / "Seq" / "frame10.png", clip[0])
    write_png(tmp_path / "other-data" / "Seq" / "frame11.png", clip[2])
    write_png(tmp_path / "other-gt-interp" / "Seq" / "frame10i11.png", clip[1])
    recorder = Recorder()
    result = middlebury_other(tmp_path, recorder)
    assert recorder.calls[0][0] == (1, 3, 480, 640)
    f0, f2 = (torch.from_numpy(clip[k]).float() / 255 for k in (0, 2))  # float32, as the images are read
    expected_ie = np.abs(np.round(((f0 + f2) / 2 * 255).numpy()) - clip[1]).mean()
    assert result["ie"] == pytest.approx(expected_ie) and result["samples"] == 1


def test_run_benchmark_rows_put_frame_averaging_beside_the_model(tmp_path):
    root = write_vimeo(tmp_path, count=0, size=16, test_count=1)
    torch.manual_seed(0)
    rows = run_benchmark("vimeo90k", root, model_interpolator(HybridVFI(tiny_config())))
    assert [r["method"] for r in rows] == ["model", "frame averaging"]
    assert all(r["benchmark"] == "vimeo90k" and 0 < r["psnr"] < 100 for r in rows)
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_benchmark("davis", root, frame_average)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_VFI.is_dir(), reason="sample data ../shared/data/vfi not present")
def test_sample_ucf101_frame_averaging():
    """Minutes on CPU: ssim_matlab's 11x11x11 float64 convolution on ten 320x240 frames."""
    ucf = ucf101(SHARED_VFI / "ucf101", frame_average)
    assert ucf["samples"] == 10 and 25 < ucf["psnr"] < 35


@pytest.mark.skipif(not SHARED_VFI.is_dir(), reason="sample data ../shared/data/vfi not present")
def test_sample_data_middlebury_and_tiny_model():
    mb = middlebury_other(SHARED_VFI / "middlebury_others", frame_average)
    assert mb["samples"] == 3 and mb["ie"] > 0
    torch.manual_seed(0)
    model = model_interpolator(HybridVFI(tiny_config(phase=2, backbone_mode="gated_attn_only")))
    assert vimeo_sample_runs(model)


def vimeo_sample_runs(interpolate) -> bool:
    folder = SHARED_VFI / "vimeo_triplet" / "sequences" / "00001" / "0001"
    i0, gt, i1 = (read_rgb(folder / f"im{k}.png")[None] for k in (1, 2, 3))
    pred = interpolate(i0, i1, 0.5, 1.0)
    return pred.shape == gt.shape == (1, 3, 256, 448) and bool(((pred >= 0) & (pred <= 1)).all())


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_VFI.is_dir(), reason="sample data ../shared/data/vfi not present")
def test_sample_vimeo_triplet_through_the_official_reader(tmp_path):
    """The sample has the official sequences/ folder but no list: write one naming its triplet."""
    (tmp_path / "tri_testlist.txt").write_text("00001/0001\n")
    (tmp_path / "sequences").symlink_to((SHARED_VFI / "vimeo_triplet" / "sequences").resolve())
    rows = run_benchmark("vimeo90k", tmp_path, Recorder())
    assert [r["samples"] for r in rows] == [1, 1] and rows[0]["psnr"] == pytest.approx(rows[1]["psnr"])
