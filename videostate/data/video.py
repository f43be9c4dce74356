"""Video in and out over PyAV (FFmpeg), with bounded memory; image folders over OpenCV alone.

:class:`VideoReader` reads a video file or a folder of numbered images through one interface:
iteration decodes frame after frame (only the current frame is in memory), ``reader[i]`` seeks to
any frame, and ``len``, ``fps``, ``width``, ``height`` are known up front. Frames come as uint8
``(height, width, 3)`` RGB arrays, or as float tensors ``(3, height, width)`` in ``[0, 1]`` with
``format="tensor"``. A rotation stored in the file (phone videos) is applied, so frames come upright
and ``width``/``height`` describe the upright frame.

:class:`VideoWriter` encodes H.264 (yuv420p) at a given frame rate and can copy the audio stream of
a source file, so a tool that rewrites a video keeps its sound and timing.

Every failure to read names the file: a missing path raises :class:`FileNotFoundError`, anything
else that cannot be read (corrupt data, no video stream, zero frames, a pixel format that cannot be
converted to RGB) raises :class:`VideoError`.

PyAV is imported only when a video file is decoded or encoded, so image folders are read (and this
package imported) where it is not installed; opening a video file there raises
:class:`ModuleNotFoundError` naming the package to install (:func:`require_av`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    import av

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Decode forward instead of seeking when the wanted frame is at most this many frames ahead.
_SEEK_THRESHOLD = 32


class VideoError(ValueError):
    """A video or image sequence that exists but cannot be read; the message names the file."""


def require_av(purpose: str) -> ModuleType:
    """The ``av`` module (PyAV), imported on first use; ``purpose`` says what needs it in the error raised
    when it is not installed."""
    try:
        import av
    except ImportError as e:
        raise ModuleNotFoundError(
            f"{purpose} needs PyAV, which is not installed: pip install av (image folders are read without it)",
            name="av",
        ) from e
    return av


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically: ``frame2`` before ``frame10``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder (suffixes :data:`IMAGE_SUFFIXES`) in natural order: ``2.png`` before
    ``10.png``. Other files are ignored; an empty list means no images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    """uint8 ``(height, width, 3)`` -> float32 ``(3, height, width)`` in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1))).float().div_(255.0)


def _rotate_upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counterclockwise, a multiple of 90)."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=quarter_turns)) if quarter_turns else frame


class VideoReader:
    """Frames of a video file or of a folder of numbered images.

    Args:
        path: a video file (anything FFmpeg reads) or a folder of images (``.png``, ``.jpg``, ...)
            ordered by the numbers in their names (``2.png`` before ``10.png``).
        format: ``"numpy"`` gives uint8 ``(height, width, 3)`` RGB arrays; ``"tensor"`` gives float32
            ``(3, height, width)`` tensors in ``[0, 1]``.
        fps: frame rate of an image folder (a folder stores none); a video file's own rate is used and
            passing ``fps`` for one is an error.

    Attributes:
        fps: frames per second (float); ``frame_rate`` is the exact rate as a :class:`Fraction`.
        width, height: size of the upright frame.
        rotation: degrees counterclockwise, in [0, 360), applied to every decoded frame (0 for folders).

    The frame count comes from the container's packet index (no decoding), and random access seeks
    to the nearest keyframe before the wanted frame. A folder's images must share one size.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        format: Literal["numpy", "tensor"] = "numpy",
        fps: float | Fraction | None = None,
    ):
        if format not in ("numpy", "tensor"):
            raise ValueError(f"format must be 'numpy' or 'tensor'; got {format!r}")
        self.path = Path(path)
        self.format = format
        if not self.path.exists():
            raise FileNotFoundError(f"video not found: {self.path}")
        self._container = None
        if self.path.is_dir():
            self._open_folder(fps)
        else:
            if fps is not None:
                raise ValueError(f"fps is read from the video file {self.path}; pass fps only for image folders")
            self._open_file()

    # -- opening -------------------------------------------------------------------------------------

    def _open_folder(self, fps) -> None:
        self._files = frame_files(self.path)
        if not self._files:
            raise VideoError(
                f"image folder {self.path} has no frames: expected files ending in {', '.join(IMAGE_SUFFIXES)}"
            )
        self.frame_rate = Fraction(30) if fps is None else Fraction(fps).limit_denominator(1001)
        self.rotation = 0
        first = self._read_image(0)
        self.height, self.width = first.shape[:2]
        self._num_frames = len(self._files)

    def _open_file(self) -> None:
        self._av = av = require_av(f"reading the video file {self.path}")
        try:
            container = av.open(str(self.path))
        except av.error.FFmpegError as e:
            raise VideoError(f"cannot read video {self.path}: {e}") from e
        self._container = container
        if not container.streams.video:
            container.close()
            raise VideoError(f"{self.path} has no video stream (streams: {[s.type for s in container.streams]})")
        stream = container.streams.video[0]
        self._stream = stream
        self._pts = self._scan_pts()
        if not self._pts:
            container.close()
            raise VideoError(f"{self.path} has zero video frames")
        if stream.codec_context.pix_fmt is None:
            container.close()
            raise VideoError(f"{self.path}: unsupported pixel format (FFmpeg reports none for its video stream)")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            container.close()
            raise VideoError(f"{self.path}: the video stream has no frame rate")
        self.frame_rate = Fraction(rate)
        self._num_frames = len(self._pts)
        self._index_of = {pts: i for i, pts in enumerate(self._pts)}
        self._decoder: Iterator | None = None
        self._next_index = 0  # index of the frame the sequential decoder yields next
        self._last: tuple[int, av.VideoFrame] | None = None  # the newest decoded frame
        first = self._decode_at(0)
        self.rotation = round(first.rotation) % 360
        self.height, self.width = self._to_rgb(first).shape[:2]

    def _scan_pts(self) -> list[int]:
        """Presentation timestamps of every video packet, sorted (demuxing only, no decoding)."""
        pts = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.pts is None:
                    raise VideoError(f"{self.path}: a video packet has no timestamp; cannot index frames")
                pts.append(packet.pts)
        except self._av.error.FFmpegError as e:
            raise VideoError(f"cannot read video {self.path}: {e}") from e
        return sorted(pts)

    # -- properties ----------------------------------------------------------------------------------

    @property
    def fps(self) -> float:
        return float(self.frame_rate)

    def __len__(self) -> int:
        return self._num_frames

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, frames={len(self)}, size={self.width}x{self.height}, "
            f"fps={self.fps:.3f}, format={self.format!r})"
        )

    # -- reading -------------------------------------------------------------------------------------

    def __getitem__(self, index: int):
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame index must be an int; got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"frame {index} out of range for {self.path} with {n} frames")
        return self._output(self._frame(int(index) % n))

    def __iter__(self) -> Iterator:
        for i in range(len(self)):
            yield self._output(self._frame(i))

    def read_clip(self, indices) -> torch.Tensor:
        """Frames ``indices`` (any order, repeats allowed) as a float tensor ``(N, 3, height, width)``.

        Each distinct frame is decoded once, in increasing order.
        """
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError(f"read_clip needs at least one frame index for {self.path}")
        frames = {}
        for i in sorted(set(indices)):
            if not 0 <= i < len(self):
                raise IndexError(f"frame {i} out of range for {self.path} with {len(self)} frames")
            frames[i] = to_tensor(self._frame(i))
        return torch.stack([frames[i] for i in indices])

    def _output(self, frame: np.ndarray):
        return to_tensor(frame) if self.format == "tensor" else frame

    def _frame(self, index: int) -> np.ndarray:
        if self._container is None:
            return self._read_image(index)
        return self._to_rgb(self._decode_at(index))

    def _read_image(self, index: int) -> np.ndarray:
        import cv2

        file = self._files[index]
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            raise VideoError(f"cannot read image {file} (frame {index} of {self.path})")
        if index and image.shape[:2] != (self.height, self.width):
            raise VideoError(
                f"image {file} has size {image.shape[1]}x{image.shape[0]}; the folder's frames are "
                f"{self.width}x{self.height}"
            )
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _decode_at(self, index: int) -> av.VideoFrame:
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        frame = self._decode_uncached(index)
        self._last = (index, frame)
        return frame

    def _decode_uncached(self, index: int) -> av.VideoFrame:
        ahead = index - self._next_index
        if self._decoder is None or not 0 <= ahead <= _SEEK_THRESHOLD:
            self._seek(index)
        target = self._pts[index]
        try:
            for frame in self._decoder:
                if frame.pts is None or frame.pts not in self._index_of:
                    continue
                position = self._index_of[frame.pts]
                self._next_index = position + 1
                if frame.pts == target:
                    return frame
                if position > index:
                    break
        except self._av.error.FFmpegError as e:
            raise VideoError(f"cannot decode frame {index} of {self.path}: {e}") from e
        self._decoder = None
        raise VideoError(f"{self.path}: frame {index} (pts {target}) could not be decoded")

    def _seek(self, index: int) -> None:
        self._container.seek(self._pts[index], stream=self._stream, backward=True, any_frame=False)
        self._decoder = self._container.decode(self._stream)
        self._next_index = -1  # unknown until the first decoded frame

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        try:
            rgb = frame.to_ndarray(format="rgb24")
        except (self._av.error.FFmpegError, ValueError) as e:
            raise VideoError(f"{self.path}: cannot convert pixel format {frame.format.name!r} to RGB: {e}") from e
        return _rotate_upright(rgb, frame.rotation)

    # -- closing -------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._decoder = None
            self._last = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()


class VideoWriter:
    """Encode frames to an H.264 (yuv420p) video, optionally copying a source file's audio.

    Args:
        path: output file; the container follows the suffix (``.mp4``, ``.mkv``, ``.mov``).
        fps: frame rate, a float or an exact :class:`Fraction` (``reader.frame_rate`` keeps a
            29.97 fps source at exactly 30000/1001).
        audio_from: a video file whose first audio stream is copied packet for packet (no
            re-encoding), interleaved with the video; a file without audio is an error.
        crf: x264 constant rate factor (0 lossless, 18 visually lossless, 23 default).
        preset: x264 speed/size preset.

    ``write`` takes uint8 ``(height, width, 3)`` RGB arrays or float tensors/arrays ``(3, height,
    width)`` in ``[0, 1]``. The size is fixed by the first frame. yuv420p needs even sizes: an odd
    width or height is padded by one replicated column or row (``output_size`` tells the size written).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float | Fraction,
        audio_from: str | os.PathLike | None = None,
        *,
        crf: int = 18,
        preset: str = "medium",
    ):
        if not fps or float(fps) <= 0:
            raise ValueError(f"fps must be positive; got {fps!r}")
        self.path = Path(path)
        self.frame_rate = Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)
        self._options = {"crf": str(crf), "preset": preset}
        self._av = av = require_av(f"writing the video file {self.path}")
        self._audio_source = None
        if audio_from is not None:
            self._open_audio_source(Path(audio_from))
        try:
            self._container = av.open(str(self.path), "w")
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoError(f"cannot create video {self.path}: {e}") from e
        self._stream = None
        self._audio_out = None
        self._audio_packets: Iterator | None = None
        self._pending_audio = None
        self.frames_written = 0
        self.input_size: tuple[int, int] | None = None  # (width, height) of the frames given
        self.output_size: tuple[int, int] | None = None  # (width, height) encoded

    def _open_audio_source(self, source: Path) -> None:
        if not source.exists():
            raise FileNotFoundError(f"audio source not found: {source}")
        try:
            container = self._av.open(str(source))
        except self._av.error.FFmpegError as e:
            raise VideoError(f"cannot read audio source {source}: {e}") from e
        if not container.streams.audio:
            container.close()
            raise VideoError(f"audio source {source} has no audio stream")
        self._audio_source = container

    def _start(self, height: int, width: int) -> None:
        self.input_size = (width, height)
        self.output_size = (width + width % 2, height + height % 2)
        stream = self._container.add_stream("libx264", rate=self.frame_rate, options=self._options)
        stream.width, stream.height = self.output_size
        stream.pix_fmt = "yuv420p"
        self._stream = stream
        if self._audio_source is not None:
            in_audio = self._audio_source.streams.audio[0]
            try:
                self._audio_out = self._container.add_stream_from_template(in_audio)
            except (self._av.error.FFmpegError, ValueError) as e:
                raise VideoError(
                    f"cannot copy audio codec {in_audio.codec_context.name!r} from "
                    f"{self._audio_source.name} into {self.path}: {e}"
                ) from e
            self._audio_packets = self._audio_source.demux(in_audio)

    def write(self, frame) -> None:
        """Append one frame: uint8 ``(height, width, 3)`` RGB, or float ``(3, height, width)`` in [0, 1]."""
        rgb = self._as_rgb_uint8(frame)
        if self._stream is None:
            self._start(*rgb.shape[:2])
        elif (rgb.shape[1], rgb.shape[0]) != self.input_size:
            raise ValueError(
                f"every frame written to {self.path} must be {self.input_size[0]}x{self.input_size[1]} "
                f"(width x height) like the first; got {rgb.shape[1]}x{rgb.shape[0]}"
            )
        pad_h, pad_w = self.output_size[1] - rgb.shape[0], self.output_size[0] - rgb.shape[1]
        if pad_h or pad_w:
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        video_frame = self._av.VideoFrame.from_ndarray(rgb, format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self.frame_rate
        self.frames_written += 1
        self._mux(self._stream.encode(video_frame))

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)
            if self._audio_packets is not None and packet.pts is not None:
                self._mux_audio(until=float(packet.pts * packet.time_base))

    def _mux_audio(self, until: float | None) -> None:
        """Copy source audio packets that start before ``until`` seconds (all when ``None``)."""
        while True:
            packet = self._pending_audio
            if packet is None:
                packet = next(self._audio_packets, None)
                if packet is None:
                    self._audio_packets = None
                    return
                if packet.dts is None:  # the demuxer's final flush packet
                    continue
            if until is not None and packet.pts is not None and float(packet.pts * packet.time_base) > until:
                self._pending_audio = packet
                return
            self._pending_audio = None
            packet.stream = self._audio_out
            self._container.mux(packet)

    @staticmethod
    def _as_rgb_uint8(frame) -> np.ndarray:
        if isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().numpy()
        frame = np.asarray(frame)
        if frame.dtype == np.uint8:
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"a uint8 frame must have shape (height, width, 3); got {frame.shape}")
            return np.ascontiguousarray(frame)
        if np.issubdtype(frame.dtype, np.floating):
            if frame.ndim != 3 or frame.shape[0] != 3:
                raise ValueError(f"a float frame must have shape (3, height, width); got {frame.shape}")
            rgb = np.clip(frame.transpose(1, 2, 0), 0.0, 1.0) * 255.0
            return np.ascontiguousarray(np.rint(rgb).astype(np.uint8))
        raise TypeError(f"frames must be uint8 (height, width, 3) or float (3, height, width); got {frame.dtype}")

    def close(self) -> None:
        """Flush the encoder, copy the remaining audio and finish the file. Safe to call twice."""
        if self._container is None:
            return
        try:
            if self._stream is None:
                raise VideoError(f"no frames were written to {self.path}")
            self._mux(self._stream.encode())
            if self._audio_packets is not None:
                self._mux_audio(until=None)
        finally:
            self._container.close()
            self._container = None
            if self._audio_source is not None:
                self._audio_source.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._container is not None:  # keep the original error; drop the partial file
            self._container.close()
            self._container = None
            if self._audio_source is not None:
                self._audio_source.close()
            self.path.unlink(missing_ok=True)
