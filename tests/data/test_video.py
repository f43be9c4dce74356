import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.data.synthetic import frame_index_of, frame_pattern, write_frames, write_video
from videostate.data.video import VideoError, VideoReader, VideoWriter, frame_files, natural_key

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "../shared/data"  # beside the repository


def test_reader_metadata_iteration_and_random_access(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=40, fps=Fraction(30000, 1001), gop=8)
    with VideoReader(path) as r:
        assert (len(r), r.width, r.height, r.rotation) == (40, 48, 32, 0)
        assert r.frame_rate == Fraction(30000, 1001) and r.fps == pytest.approx(29.97, abs=1e-3)
        frames = list(r)
        assert [frame_index_of(f, 32, 48) for f in frames] == list(range(40))
        assert frames[0].dtype == np.uint8 and frames[0].shape == (32, 48, 3)
        # seeks backwards, far forwards, near forwards, negative indices: same pixels as sequential decode
        for i in [33, 2, 39, 17, 18, 25, 0, -1, -40]:
            np.testing.assert_array_equal(r[i], frames[i])
        with pytest.raises(IndexError, match=r"frame 40 out of range.*40 frames"):
            r[40]


def test_reader_tensor_format_and_read_clip(tmp_path):
    path = write_video(tmp_path / "v.mkv", num_frames=10)
    r = VideoReader(path, format="tensor")
    x = r[3]
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), VideoReader(path)[3].transpose(2, 0, 1) / 255.0, atol=1e-7)
    clip = r.read_clip([7, 2, 2, 9])
    assert clip.shape == (4, 3, 32, 48)
    assert [frame_index_of(c.permute(1, 2, 0).numpy() * 255, 32, 48) for c in clip] == [7, 2, 2, 9]


def test_frames_are_close_to_what_was_written(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=3)
    for i, frame in enumerate(VideoReader(path)):
        assert np.abs(frame.astype(int) - frame_pattern(i, 32, 48).astype(int)).mean() < 2.0


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    path = write_video(tmp_path / "rot.mp4", num_frames=3, rotation=rotation)
    r = VideoReader(path)
    assert r.rotation == rotation % 360
    raw = frame_pattern(1, 32, 48)
    expected = np.rot90(raw, k=(rotation // 90) % 4)
    assert (r.height, r.width) == expected.shape[:2] and r[1].shape == expected.shape
    assert np.abs(r[1].astype(int) - expected.astype(int)).mean() < 2.0


def test_folder_is_sorted_numerically(tmp_path):
    folder = write_frames(tmp_path / "frames", num_frames=12)
    r = VideoReader(folder, fps=12.5)
    assert (len(r), r.width, r.height, r.fps) == (12, 48, 32, 12.5)
    assert [frame_index_of(f, 32, 48) for f in r] == list(range(12))
    assert frame_index_of(r[10], 32, 48) == 10
    assert sorted(["f10.png", "f2.png", "f1.png"], key=natural_key) == ["f1.png", "f2.png", "f10.png"]
    (folder / "notes.txt").write_text("not a frame")
    assert [p.name for p in frame_files(folder)] == [f"{i}.png" for i in range(12)]
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*missing"):
        frame_files(tmp_path / "missing")


def test_folder_errors_name_the_file(tmp_path):
    folder = write_frames(tmp_path / "frames", num_frames=3)
    (folder / "1.png").write_bytes(b"not a png")
    r = VideoReader(folder)
    with pytest.raises(VideoError, match=r"1\.png"):
        r[1]
    import cv2

    cv2.imwrite(str(folder / "1.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(VideoError, match=r"1\.png has size 10x10.*48x32"):
        r[1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match=r"empty has no frames"):
        VideoReader(tmp_path / "empty")


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing.mp4"):
        VideoReader(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"junk.mp4"):
        VideoReader(junk)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty.mp4"):
        VideoReader(empty)
    good = write_video(tmp_path / "good.mp4", num_frames=20)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoError, match=r"truncated.mp4"):
        VideoReader(truncated)
    with pytest.raises(ValueError, match=r"fps is read from the video file"):
        VideoReader(good, fps=30)


def test_zero_frames_and_audio_only_are_errors(tmp_path):
    noframes = tmp_path / "noframes.avi"
    with av.open(str(noframes), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
    with pytest.raises(VideoError, match=r"noframes.avi has zero video frames"):
        VideoReader(noframes)
    audio_only = tmp_path / "audio.m4a"
    with av.open(str(audio_only), "w") as c:
        a = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for p in [*a.encode(frame), *a.encode()]:
            c.mux(p)
    with pytest.raises(VideoError, match=r"audio.m4a has no video stream"):
        VideoReader(audio_only)


def test_writer_roundtrip_keeps_rate_and_pads_odd_sizes(tmp_path):
    out = tmp_path / "out.mp4"
    rng = np.random.default_rng(0)
    frames = [frame_pattern(i, 33, 45) for i in range(6)]
    with VideoWriter(out, Fraction(30000, 1001), crf=0) as w:
        for i, f in enumerate(frames):
            w.write(f if i % 2 else torch.from_numpy(f.transpose(2, 0, 1) / 255.0))
    assert w.output_size == (46, 34) and w.frames_written == 6
    r = VideoReader(out)
    assert (len(r), r.width, r.height, r.frame_rate) == (6, 46, 34, Fraction(30000, 1001))
    for i, f in enumerate(r):
        assert frame_index_of(f[:33, :45], 33, 45) == i
        np.testing.assert_allclose(f[:, 45].astype(int), f[:, 44].astype(int), atol=3)  # replicated column
    with pytest.raises(ValueError, match=r"must be 45x33.*got 40x33"):
        with VideoWriter(tmp_path / "bad.mp4", 25) as w:
            w.write(frames[0])
            w.write(rng.integers(0, 255, (33, 40, 3), dtype=np.uint8))
    assert not (tmp_path / "bad.mp4").exists()
    with pytest.raises(ValueError, match=r"\(3, height, width\)"):
        VideoWriter(tmp_path / "x.mp4", 25).write(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(VideoError, match=r"no frames were written"):
        VideoWriter(tmp_path / "none.mp4", 25).close()


def test_writer_copies_audio_and_timing(tmp_path):
    src = write_video(tmp_path / "src.mp4", num_frames=25, audio=True)
    out = tmp_path / "out.mp4"
    reader = VideoReader(src)
    with VideoWriter(out, reader.frame_rate, audio_from=src) as w:
        for f in reader:
            w.write(f)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        sa, sb = a.streams.audio[0], b.streams.audio[0]
        assert sb.codec_context.name == sa.codec_context.name and sb.rate == sa.rate
        pa = [(p.pts, bytes(p)) for p in a.demux(sa) if p.size]
        pb = [(p.pts, bytes(p)) for p in b.demux(sb) if p.size]
        assert pa == pb  # every packet copied untouched
    assert VideoReader(out).frame_rate == reader.frame_rate and len(VideoReader(out)) == 25
    with pytest.raises(VideoError, match=r"has no audio stream"):
        VideoWriter(tmp_path / "o2.mp4", 25, audio_from=write_video(tmp_path / "silent.mp4", 2))
    with pytest.raises(FileNotFoundError, match=r"nope.mp4"):
        VideoWriter(tmp_path / "o3.mp4", 25, audio_from=tmp_path / "nope.mp4")


@pytest.mark.skipif(not (SHARED / "videos").is_dir(), reason="sample data ../shared/data absent")
def test_sample_video_random_access_matches_sequential():
    r = VideoReader(SHARED / "videos" / "davis_rollercoaster.mp4")
    assert (len(r), r.width, r.height, r.fps) == (70, 960, 540, 24.0)
    frames = list(r)
    assert len(frames) == 70
    for i in [69, 5, 40, 41, 0]:
        np.testing.assert_array_equal(r[i], frames[i])


@pytest.mark.skipif(not (SHARED / "sintel_frames").is_dir(), reason="sample data ../shared/data absent")
def test_sample_frame_folder():
    r = VideoReader(SHARED / "sintel_frames")
    assert (len(r), r.width, r.height) == (10, 1024, 436)
    assert r.path.joinpath("frame_0016.png") == r._files[0]


def test_iteration_holds_one_frame_at_a_time(tmp_path):
    import gc
    import weakref

    path = write_video(tmp_path / "long.mp4", num_frames=240, height=64, width=96, gop=30)
    alive = []
    with VideoReader(path) as reader:
        for frame in reader:
            alive.append(weakref.ref(frame))
            del frame
        gc.collect()
        assert len(alive) == 240
        kept = sum(ref() is not None for ref in alive)
    assert kept <= 1, f"the reader still holds {kept} decoded frames"


def test_without_pyav_folders_are_read_and_video_files_name_the_package(tmp_path):
    """With ``import av`` failing, as where PyAV is not installed, the package imports and reads image folders
    (``videostate info`` too); reading or writing a video file raises an error naming the package to install."""
    folder = write_frames(tmp_path / "frames", num_frames=5)
    video = write_video(tmp_path / "v.mp4", num_frames=3)
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["av"] = None  # import av now fails
        from videostate.data import ClipDataset, ClipSampler, VideoReader, VideoWriter
        from videostate.data.cli import describe

        errors = {{}}
        for name, open_video in [
            ("reader", lambda: VideoReader({str(video)!r})),
            ("writer", lambda: VideoWriter({str(tmp_path / "out.mp4")!r}, 25)),
        ]:
            try:
                open_video()
            except ModuleNotFoundError as e:
                errors[name] = [str(e), e.name]
        with VideoReader({str(folder)!r}) as reader:
            indices = [round((float(frame[..., 0].mean()) - 20) / 5) for frame in reader]  # frame_index_of
        clip, meta = ClipDataset([{str(folder)!r}], ClipSampler(2, stride=2, mode="sliding"))[1]
        info = describe({str(folder)!r})
        print(json.dumps({{"indices": indices, "clip": list(clip.shape), "info": info, "errors": errors}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["indices"] == [0, 1, 2, 3, 4] and result["clip"] == [2, 3, 32, 48]
    assert result["info"]["frames"] == 5 and result["info"]["audio"] is None
    reader_error, writer_error = result["errors"]["reader"], result["errors"]["writer"]
    assert reader_error[1] == writer_error[1] == "av"
    assert reader_error[0].startswith(f"reading the video file {video} needs PyAV")
    assert writer_error[0].startswith("writing the video file") and "pip install av" in writer_error[0]
    assert "pip install av" in reader_error[0]
