"""Video files as frames at sampled moments, decoded with PyAV (FFmpeg's libraries, a wheel: no
system ffmpeg).

Every frame is decoded and shrunk to a 16x16 colour signature by FFmpeg's scaler (cheap). A frame
is a candidate when it differs from the frame before it by more than `scene` (a cut: the mean
absolute difference of the signatures, 0..1), or when `every` seconds have passed since the last
kept frame (the ceiling), and the first frame is one. A candidate near-identical to the last kept
frame (difference under `same`) is merged into it, so a still shot gives one item however long it
lasts. Past `max_frames` candidates, evenly spaced ones are kept: memory holds at most
2 x `max_frames` frames however long the video (at 2 x the cap, every other kept frame is dropped
and from then on every other candidate is taken, so the kept ones stay evenly spread). Kept frames
are scaled by FFmpeg so their short side is `min_side` (the model's input; a 4K frame is never
held whole).

Frames are turned upright as the video's display matrix says (a phone's portrait video is
stored landscape with a 90-degree rotation), and the video's size is given upright.

FFmpeg runs in a worker process (`retriever.media.isolation`) with bounded memory, and a stream
whose coded size is over the pixel cap is refused before a frame is decoded. A file FFmpeg
cannot open or decode (not a video, truncated, damaged) raises `VideoError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from PIL import Image

from retriever.errors import BadSetting, ImageError, VideoError
from retriever.media.formats import name_of, refuse_over
from retriever.media.images import DEFAULT_MAX_PIXELS, decode_memory
from retriever.media.isolation import isolated

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})
SIGNATURE = 16  # px: the side of the colour thumbnail frames are compared by
# One frame at least every 2 s: whatever is in view 2 s without a cut (a pan, a dissolve) gets
# one. At 5 s, 7 of 19 landmarks a pan shows for 2 s got one (10 s: 3), for 12 items per minute
# of constant motion against 30 (`python -m bench.media video-every`, bench/RESULTS.md). A
# still shot is still one item (identical frames merge); past DEFAULT_MAX_FRAMES (4 minutes of
# constant motion at 2 s) the kept frames are spread evenly.
DEFAULT_EVERY = 2.0
DEFAULT_MAX_FRAMES = 120
# the display matrix's rotation (degrees counter-clockwise, as PyAV's VideoFrame.rotation gives
# it) -> the PIL transpose that shows the frame upright
TURNS = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270,
         270: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
         -180: Image.Transpose.ROTATE_180}

if TYPE_CHECKING:  # numpy loads when a video is read: the CLI imports this module at start
    import numpy as np


@dataclass(frozen=True)
class VideoOptions:
    every: float = DEFAULT_EVERY  # seconds: at least one frame this often (the ceiling)
    scene: float = 0.08  # mean absolute difference (0..1) of consecutive frames that is a cut
    same: float = 0.02  # a frame closer than this to the last kept one is merged into it
    max_frames: int = DEFAULT_MAX_FRAMES  # frames kept per video at most (evenly spaced)

    def __post_init__(self) -> None:
        if not self.every > 0:
            raise BadSetting("video_every", f"{self.every:g}", "must be more than 0 seconds")
        if self.max_frames < 1:
            raise BadSetting("video_max_frames", str(self.max_frames), "must be at least 1")


@dataclass(frozen=True)
class Frame:
    time: float  # seconds from the start
    image: Image.Image  # RGB, short side `min_side`


@dataclass(frozen=True)
class VideoFrames:
    frames: list[Frame]
    width: int  # the video's own size
    height: int
    duration: float  # seconds, the last decoded frame's time


def sample_frames(source: Path | BinaryIO, options: VideoOptions, min_side: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoFrames:
    """The frames of `source` worth an item each (see the module docstring)."""
    return cast(VideoFrames, isolated(sample_in_worker, source, options, min_side, max_pixels,
                                      memory=decode_memory(max_pixels),
                                      failure=_failure(source)))


def sample_in_worker(source: BinaryIO, options: VideoOptions, min_side: int,
                     max_pixels: int) -> VideoFrames:
    """`sample_frames`, in a worker process."""
    rotation: list[int] = []  # the first frame's: the container's display matrix
    with _opened(source, max_pixels) as (container, stream):
        width, height = stream.codec_context.width, stream.codec_context.height
        kept, last = _sample(_noting_rotation(container.decode(stream), rotation), options,
                             _scaled(width, height, min_side))
    if not kept:
        raise VideoError(f"{name_of(source)}: no decodable video frames", name_of(source))
    turn = TURNS.get(rotation[0])
    if turn is not None:
        kept = [Frame(frame.time, frame.image.transpose(turn)) for frame in kept]
        if turn != Image.Transpose.ROTATE_180:  # the video's size as shown
            width, height = height, width
    return VideoFrames(_spread(kept, options.max_frames), width, height, last)


def _noting_rotation(frames: Iterator[Any], rotation: list[int]) -> Iterator[Any]:
    """`frames`, the first one's rotation put in `rotation` (degrees counter-clockwise)."""
    for frame in frames:
        if not rotation:
            rotation.append(round(frame.rotation or 0))
        yield frame


@contextmanager
def _opened(source: BinaryIO, max_pixels: int) -> Iterator[tuple[Any, Any]]:
    """(container, its first video stream), the stream's coded size checked against
    `max_pixels`; FFmpeg's errors as `VideoError`."""
    import av

    name = name_of(source)
    try:
        with av.open(source, "r") as container:
            if not container.streams.video:
                raise VideoError(f"{name}: no video stream", name)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            context = stream.codec_context
            refuse_over(name, (context.width, context.height), max_pixels, "video frame")
            yield container, stream
    except (VideoError, ImageError):
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, IndexError) as err:
        reason = getattr(err, "strerror", None) or str(err).strip() or type(err).__name__
        raise VideoError(f"{name}: not a readable video ({reason})", name) from err


def _failure(source: Path | BinaryIO) -> Callable[[str], VideoError]:
    return lambda line: VideoError(line, name_of(source))


def _upright(frame: Any, size: tuple[int, int]) -> Image.Image:
    """A decoded frame scaled to `size` (w, h, as stored), RGB, turned as it is shown."""
    image = frame.reformat(width=size[0], height=size[1], format="rgb24").to_image()
    turn = TURNS.get(round(frame.rotation or 0))
    return image.transpose(turn) if turn is not None else image


def _sample(frames: Any, options: VideoOptions, size: tuple[int, int]
            ) -> tuple[list[Frame], float]:
    """(kept frames, the last frame's time) from decoded `frames`; at most 2 x max_frames
    of them (then every `stride`-th candidate is taken, see the module docstring)."""
    kept: list[Frame] = []
    previous = kept_signature = None
    kept_at, time = float("-inf"), 0.0
    stride, candidates = 1, 0
    for index, frame in enumerate(frames):
        time = float(frame.time) if frame.time is not None else float(index)
        signature = _signature(frame)
        cut = previous is None or _difference(signature, previous) > options.scene
        due = time - kept_at >= options.every
        previous = signature
        if not (cut or due):
            continue
        if kept_signature is not None and _difference(signature, kept_signature) < options.same:
            kept_at = time  # the same picture as the last kept frame: merged into it
            continue
        kept_signature, kept_at = signature, time
        candidates += 1
        if (candidates - 1) % stride:
            continue  # thinned: candidates 0, stride, 2 x stride, ... are kept
        image = frame.reformat(width=size[0], height=size[1], format="rgb24").to_image()
        kept.append(Frame(round(time, 3), image))
        if len(kept) >= 2 * options.max_frames:
            kept, stride = kept[::2], stride * 2
    return kept, time


def frame_at(source: Path | BinaryIO, time: float, min_side: int,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The frame shown at `time` seconds (the first at or after it), upright, short side
    `min_side`. Raises `VideoError`."""
    return cast(Image.Image, isolated(frame_in_worker, source, time, min_side, max_pixels,
                                      memory=decode_memory(max_pixels),
                                      failure=_failure(source)))


def frame_in_worker(source: BinaryIO, time: float, min_side: int,
                    max_pixels: int) -> Image.Image:
    """`frame_at`, in a worker process."""
    with _opened(source, max_pixels) as (container, stream):
        size = _scaled(stream.codec_context.width, stream.codec_context.height, min_side)
        if stream.time_base is not None and time > 0:
            container.seek(int(time / stream.time_base), stream=stream, backward=True)
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            if frame.time is None or frame.time >= time - 1e-3:
                break
        if chosen is None:
            raise VideoError(f"{name_of(source)}: no frame at {time:g} s", name_of(source))
        return _upright(chosen, size)


def frame_jpeg(source: Path | BinaryIO, time: float, size: int) -> bytes:
    """The frame at `time` as a JPEG, its longest side `size` pixels (a thumbnail)."""
    import io

    image = frame_at(source, time, size)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def clock(seconds: float) -> str:
    """83.0 -> '01:23'; 3723.0 -> '1:02:03'."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


def _signature(frame: Any) -> np.ndarray:
    import numpy as np

    small = frame.reformat(width=SIGNATURE, height=SIGNATURE, format="rgb24")
    return small.to_ndarray().astype(np.float32) * np.float32(1 / 255)  # (16, 16, 3)


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(a - b).mean())


def _scaled(width: int, height: int, min_side: int) -> tuple[int, int]:
    """(w, h) with the short side `min_side` (never enlarged), even numbers for the scaler."""
    scale = min(1.0, min_side / max(1, min(width, height)))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _spread(frames: list[Frame], cap: int) -> list[Frame]:
    if len(frames) <= cap:
        return frames
    import numpy as np

    picks = np.linspace(0, len(frames) - 1, cap).round().astype(int)
    return [frames[i] for i in sorted(set(picks.tolist()))]
