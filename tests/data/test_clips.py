import math

import pytest
import torch

from tests.data.synthetic import frame_index_of, write_frames, write_video
from videostate.data import ClipDataset, ClipSampler, collate_clips
from videostate.data.transforms import RandomCrop


def _indices_of(clip):
    h, w = clip.shape[-2:]
    return [frame_index_of(f.permute(1, 2, 0).numpy() * 255, h, w) for f in clip]


def test_sliding_windows_cover_every_frame():
    s = ClipSampler(num_frames=4, stride=2, mode="sliding", step=3)
    assert s.span == 7
    assert s.windows(15) == [0, 3, 6, 8]  # last window ends on the final frame
    for start in s.windows(15):
        assert s.indices(15, start) == [start + 2 * i for i in range(4)]
    assert ClipSampler(4, mode="sliding").windows(8) == [0, 4]
    assert ClipSampler(1, mode="sliding", step=1).windows(5) == [0, 1, 2, 3, 4]  # single-image mode


def test_uniform_follows_segment_centres():
    s = ClipSampler(num_frames=5, mode="uniform")
    for length in (5, 17, 100, 3):
        expected = [min(length - 1, math.floor((i + 0.5) * length / 5)) for i in range(5)]
        assert s.indices(length, None) == expected
    assert s.indices(100, None) == [10, 30, 50, 70, 90]


def test_random_starts_are_uniform_and_fit():
    s = ClipSampler(num_frames=3, stride=2)
    g = torch.Generator().manual_seed(0)
    starts = [s.indices(10, None, g)[0] for _ in range(2000)]
    assert set(starts) == set(range(6))  # 0 .. length - span
    counts = torch.bincount(torch.tensor(starts)).float()
    assert counts.min() / counts.max() > 0.8


def test_short_videos_pad_or_skip():
    pad = ClipSampler(num_frames=4, stride=2)
    assert pad.windows(3) == [0] and pad.indices(3, 0) == [0, 2, 2, 2]
    assert ClipSampler(num_frames=4, stride=2, short="skip").windows(3) == []
    assert ClipSampler(num_frames=4, mode="sliding", short="skip").windows(3) == []


def test_sampler_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"num_frames and stride must be >= 1"):
        ClipSampler(0)
    with pytest.raises(ValueError, match=r"stride must be 1"):
        ClipSampler(4, stride=2, mode="uniform")
    with pytest.raises(ValueError, match=r"step"):
        ClipSampler(4, step=2)
    with pytest.raises(ValueError, match=r"mode must be"):
        ClipSampler(4, mode="dense")


def test_dataset_over_files_and_folders(tmp_path):
    (tmp_path / "a").mkdir()
    v = write_video(tmp_path / "a" / "clip.mp4", num_frames=10)
    f = write_frames(tmp_path / "b" / "frames", num_frames=6)
    ds = ClipDataset([v, f], ClipSampler(num_frames=3, stride=2, mode="sliding"))
    assert ds.lengths == [10, 6] and ds.ids == ["a/clip", "b/frames"]
    assert ds.items == [(0, 0), (0, 5), (1, 0), (1, 1)]  # each video: windows of span 5, then its tail
    clip, meta = ds[1]
    assert clip.shape == (3, 3, 32, 48) and clip.dtype == torch.float32
    assert meta["frame_indices"] == [5, 7, 9] and _indices_of(clip) == [5, 7, 9]
    assert meta["video_id"] == "a/clip" and not meta["padded"]
    clip, meta = ds[3]
    assert meta["video_id"] == "b/frames" and _indices_of(clip) == meta["frame_indices"] == [1, 3, 5]


def test_random_clips_are_reproducible_per_epoch_and_transform_is_clip_consistent(tmp_path):
    v = write_video(tmp_path / "v.mp4", num_frames=12)
    ds = ClipDataset([v, v], ClipSampler(num_frames=4), transform=RandomCrop((16, 16)), seed=3)
    a, meta_a = ds[0]
    b, meta_b = ds[0]
    assert torch.equal(a, b) and meta_a == meta_b
    # the same crop on every frame: each cropped frame equals the full frame cut at one window
    full = ds._reader(v).read_clip(meta_a["frame_indices"])
    windows = {
        (top, left)
        for top in range(17)
        for left in range(33)
        if torch.equal(full[:, :, top : top + 16, left : left + 16], a)
    }
    assert len(windows) >= 1
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        seen.add(tuple(ds[0][1]["frame_indices"]))
    assert len(seen) > 1
    restored = pickle_roundtrip(ds)
    assert torch.equal(restored[0][0], ds[0][0])


def pickle_roundtrip(obj):
    import pickle

    return pickle.loads(pickle.dumps(obj))


def test_short_video_padding_and_skip_in_dataset(tmp_path):
    short = write_video(tmp_path / "short.mp4", num_frames=3)
    long = write_video(tmp_path / "long.mp4", num_frames=9)
    ds = ClipDataset([short, long], ClipSampler(num_frames=5, mode="sliding"))
    clip, meta = ds[0]
    assert meta["padded"] and meta["frame_indices"] == [0, 1, 2, 2, 2] and _indices_of(clip) == [0, 1, 2, 2, 2]
    skip = ClipDataset([short, long], ClipSampler(num_frames=5, mode="sliding", short="skip"))
    assert {skip[i][1]["video_id"] for i in range(len(skip))} == {"long"}
    with pytest.raises(ValueError, match=r"no clips.*short='skip'"):
        ClipDataset([short], ClipSampler(num_frames=5, short="skip"))


def test_collate_and_dataloader(tmp_path):
    v = write_video(tmp_path / "v.mp4", num_frames=8)
    ds = ClipDataset([v], ClipSampler(num_frames=2, mode="sliding"))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_clips, num_workers=1)
    clips, meta = next(iter(loader))
    assert clips.shape == (3, 2, 3, 32, 48)
    assert meta["frame_indices"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert meta["video_id"] == ["v", "v", "v"]
    with pytest.raises(ValueError, match=r"share one shape"):
        collate_clips([(torch.zeros(2, 3, 8, 8), {}), (torch.zeros(2, 3, 8, 9), {})])
