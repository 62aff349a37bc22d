"""Phone videos are stored as the sensor saw them, with a display matrix (the 'rotate' tag) that
says how to show them: frames are indexed and shown upright, and the video's size is as shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retriever.media.video import VideoOptions, frame_at, sample_frames

RED, BLUE = (220, 20, 20), (20, 20, 220)
STORED = (96, 48)  # (w, h) as encoded: landscape, the left half red, the right half blue


def write_rotated(path: Path, rotation: int) -> Path:
    """Two seconds of the stored picture, with a display matrix turning it `rotation` degrees
    counter-clockwise (a phone held upright records -90: shown turned 90 clockwise)."""
    import av

    width, height = STORED
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2:] = RED, BLUE
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(rotation)
        for _ in range(10):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def colour_at(image: Image.Image, x: float, y: float) -> str:
    r, _, b = image.getpixel((int(x * (image.width - 1)), int(y * (image.height - 1))))
    return "red" if r > 150 > b else "blue" if b > 150 > r else f"{r},{b}"


# rotation -> (shown size, colour at the top centre, at the bottom centre, left middle,
# right middle)
SHOWN = {
    -90: ((48, 96), "red", "blue", None, None),  # turned clockwise: the left half on top
    90: ((48, 96), "blue", "red", None, None),  # turned counter-clockwise: the left below
    180: ((96, 48), None, None, "blue", "red"),  # upside down: left and right swapped
    0: ((96, 48), None, None, "red", "blue"),
}


@pytest.mark.parametrize("rotation", sorted(SHOWN))
def test_frames_and_thumbnails_of_a_rotated_video_are_upright(tmp_path, rotation):
    path = write_rotated(tmp_path / f"phone{rotation}.mp4", rotation)
    size, top, bottom, left, right = SHOWN[rotation]
    video = sample_frames(path, VideoOptions(), min_side=48)
    thumbnail = frame_at(path, 1.0, 48)
    for image in (video.frames[0].image, thumbnail):
        assert image.size == size
        if top:
            assert (colour_at(image, 0.5, 0.1), colour_at(image, 0.5, 0.9)) == (top, bottom)
        else:
            assert (colour_at(image, 0.1, 0.5), colour_at(image, 0.9, 0.5)) == (left, right)
    assert (video.width, video.height) == size  # recorded as shown
