"""Tiny synthetic videos written with PyAV for the tests: each frame's content encodes its index."""

from fractions import Fraction

import av
import numpy as np


def frame_pattern(i: int, height: int, width: int) -> np.ndarray:
    """A smooth uint8 RGB frame whose mean brightness identifies frame ``i`` (steps of 5 levels)."""
    y, x = np.mgrid[0:height, 0:width]
    base = 20 + 5 * i
    img = np.stack([base + 0 * x, base + (x * 40) // max(1, width), base + (y * 40) // max(1, height)], -1)
    return img.astype(np.uint8)


def frame_index_of(frame: np.ndarray, height: int, width: int) -> int:
    """Recover the index written by :func:`frame_pattern` from the red channel."""
    return round((float(frame[..., 0].mean()) - 20) / 5)


def write_video(
    path, num_frames=12, height=32, width=48, fps=Fraction(25), rotation=None, audio=False, codec="libx264", gop=4
):
    """Encode ``num_frames`` pattern frames (``crf 0`` keeps the index readable)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps, options={"crf": "0", "g": str(gop)} if codec == "libx264" else {})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        if rotation is not None:
            s.set_display_rotation(rotation)
        a = None
        if audio:
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
        for i in range(num_frames):
            f = av.VideoFrame.from_ndarray(frame_pattern(i, height, width), format="rgb24")
            f.pts = i
            f.time_base = 1 / Fraction(fps)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            samples_total = int(16000 * num_frames / float(fps))
            t = np.arange(samples_total) / 16000
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, samples_total, 1024):
                chunk = wave[None, start : start + 1024]
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
                af.sample_rate = 16000
                af.pts = start
                af.time_base = Fraction(1, 16000)
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def write_frames(folder, num_frames=12, height=32, width=48, suffix=".png"):
    """Numbered images ``0.png .. {n-1}.png`` (so lexical order would be wrong past 9)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        cv2.imwrite(str(folder / f"{i}{suffix}"), frame_pattern(i, height, width)[..., ::-1])
    return folder
