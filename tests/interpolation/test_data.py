import cv2
import numpy as np
import pytest
import torch

from videostate.interpolation.data import MixedDataset, TripletAugment, VimeoTriplet, X4KFrames, parse_ratio

from .synthetic import write_png, write_vimeo


def test_vimeo_reads_the_official_layout(tmp_path):
    root = write_vimeo(tmp_path, count=3, size=12, test_count=1)
    train, test = VimeoTriplet(root, "train"), VimeoTriplet(root, "test")
    assert len(train) == 3 and len(test) == 1
    item = train[1]
    name = (root / "tri_trainlist.txt").read_text().split()[1]
    for key, file in (("img0", "im1"), ("gt", "im2"), ("img1", "im3")):
        bgr = cv2.imread(str(root / "sequences" / name / f"{file}.png"))
        expected = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(item[key], expected)
    assert item["timestep"].item() == 0.5
    with pytest.raises(FileNotFoundError, match=r"tri_trainlist\.txt"):
        VimeoTriplet(tmp_path / "absent")
    with pytest.raises(ValueError, match="split must be"):
        VimeoTriplet(root, "val")


def test_augmentation_is_a_crop_flip_and_reversal_of_the_input():
    frames = torch.rand(3, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    augment = TripletAugment(crop_size=6)
    reversed_seen = set()
    for seed in range(24):
        out, t = augment(frames, 0.3, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 3, 6, 6)
        matches = []
        for reverse in (False, True):
            src = frames.flip(0) if reverse else frames
            for dims in ((), (-1,), (-2,), (-2, -1)):
                flipped = src.flip(dims) if dims else src
                for top in range(5):
                    for left in range(7):
                        if torch.equal(out, flipped[..., top : top + 6, left : left + 6]):
                            matches.append(reverse)
        assert matches, "output is no crop/flip/reversal of the input"
        reversed_seen.add(matches[0])
        assert t == pytest.approx(0.7 if matches[0] else 0.3)
    assert reversed_seen == {False, True}
    with pytest.raises(ValueError, match="larger than the frames"):
        TripletAugment(crop_size=20)(frames, 0.5, torch.Generator())


def write_x4k(root, frames=9, size=8):
    """Two clips whose frame i is uniformly 20 * i (grey), so a sample reveals its frame indices."""
    for clip in ("scene1/clip1", "scene2/clip1"):
        for i in range(frames):
            write_png(root / clip / f"{i:04d}.png", np.full((size, size, 3), 20 * i, np.uint8))
    return root


def indices(sample):
    return [round(sample[k][0, 0, 0].item() * 255 / 20) for k in ("img0", "gt", "img1")]


def test_x4k_samples_random_timesteps_within_the_span(tmp_path):
    ds = X4KFrames(write_x4k(tmp_path), max_span=6, samples_per_clip=10)
    assert len(ds) == 20
    spans = set()
    for i in range(len(ds)):
        i0, k, i1 = indices(ds[i])
        assert i0 < k < i1 and 2 <= i1 - i0 <= 6
        assert ds[i]["timestep"].item() == pytest.approx((k - i0) / (i1 - i0))
        spans.add(i1 - i0)
    assert len(spans) > 2


def test_x4k_curriculum_grows_the_span(tmp_path):
    ds = X4KFrames(write_x4k(tmp_path), max_span=8, curriculum_epochs=4, samples_per_clip=8)
    assert ds.span_limit() == 2
    assert all(indices(ds[i])[2] - indices(ds[i])[0] == 2 for i in range(len(ds)))
    ds.set_epoch(2)
    assert ds.span_limit() == 5
    ds.set_epoch(10)
    assert ds.span_limit() == 8
    with pytest.raises(ValueError, match="max_span must be >= 2"):
        X4KFrames(tmp_path, max_span=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no clip"):
        X4KFrames(tmp_path / "empty")


def test_mixed_dataset_follows_the_ratio():
    first, second = list(range(100, 104)), list(range(200, 203))
    mixed = MixedDataset(first, second, "2:1")
    assert len(mixed) == 6
    assert [mixed[i] for i in range(9)] == [100, 101, 200, 102, 103, 201, 100, 101, 202]
    assert parse_ratio("3:2") == (3, 2)
    for bad in ("2", "a:b", "0:1"):
        with pytest.raises(ValueError, match="mixed_ratio"):
            parse_ratio(bad)
