"""Videos: written here with PyAV (solid red, then a blue circle, then green text, 2 s each),
indexed, and each scene found at its moment by words (a model trained in the test on stills of
the three scenes) and by one of its frames. Broken videos are reported and skipped."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retriever.media.video import VideoOptions, clock, frame_at, sample_frames

from .helpers import scene, user_settings, write_video

CAPTIONS = ("a red picture", "a blue circle", "green text")
STARTS = (0.0, 2.0, 4.0)  # seconds: where each scene begins
EVERY = 1.0  # --video-every in these tests: one sampling step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """retriever-tiny trained from scratch on captioned stills of the three scenes (seconds)."""
    from retriever.demo import demo_config
    from retriever.training.loop import train

    data = tmp_path_factory.mktemp("stills")
    rng = random.Random(1)
    for i in range(90):
        scene(i % 3, rng).save(data / f"still_{i:03d}.png")
        (data / f"still_{i:03d}.txt").write_text(CAPTIONS[i % 3] + "\n")
    out = data.parent / "video-model.pt"
    train(replace(demo_config(data, out), epochs=8), log=lambda line: None)
    return out


def test_scene_changes_are_sampled_at_their_moments(tmp_path):
    video = sample_frames(write_video(tmp_path / "clip.mp4"), VideoOptions(every=10.0), 32)
    assert [f.time for f in video.frames] == list(STARTS)  # cuts only; still frames merged
    assert (video.width, video.height) == (128, 96)
    every = sample_frames(tmp_path / "clip.mp4", VideoOptions(every=0.5, same=0.0), 32)
    assert [f.time for f in every.frames] == [t / 2 for t in range(12)]  # the ceiling
    capped = sample_frames(tmp_path / "clip.mp4", VideoOptions(every=0.5, same=0.0,
                                                               max_frames=4), 32)
    assert len(capped.frames) == 4 and capped.frames[0].time == 0.0
    # 12 candidates (0.5 s apart): at 8 held they thin to 0, 1, 2, 3 s and then every other
    # candidate is taken (4, 5 s); those 6 spread to 4 evenly across the video
    assert [f.time for f in capped.frames] == [0.0, 2.0, 3.0, 5.0]
    blue = frame_at(tmp_path / "clip.mp4", 3.0, 32)
    assert blue.getpixel((blue.width // 2, blue.height // 2))[2] > 150
    assert clock(83.0) == "01:23" and clock(3723.0) == "1:02:03"


def test_a_long_video_never_holds_more_than_twice_the_cap(monkeypatch):
    """Frames are thinned as they come, so memory is bounded by the cap, not the length."""
    import retriever.media.video as video

    monkeypatch.setattr(video, "_signature", lambda frame: frame.signature)

    class FakeFrame:  # what _sample reads of a PyAV frame: its time, its signature, pixels
        def __init__(self, time: float) -> None:
            self.time, self.signature = time, np.full((16, 16, 3), time % 2, np.float32)

        def reformat(self, **_: object) -> FakeFrame:
            return self

        def to_image(self) -> Pixels:
            return Pixels()

    alive = [0, 0]  # (now, most at once): pictures held, counted as made and freed

    class Pixels:
        def __init__(self) -> None:
            alive[0] += 1
            alive[1] = max(alive)

        def __del__(self) -> None:
            alive[0] -= 1

    frames = (FakeFrame(t / 4) for t in range(4 * 3600))  # an hour, one candidate per 0.5 s
    kept, last = video._sample(frames, VideoOptions(every=0.5, same=0.0, max_frames=10), (2, 2))
    assert last == 3599.75 and 10 <= len(kept) < 20 and alive[1] <= 20
    gaps = {round(b.time - a.time, 3) for a, b in itertools.pairwise(kept)}
    assert len(gaps) == 1  # evenly spaced: one stride between every pair
    assert kept[0].time == 0.0 and kept[-1].time > 3000  # the whole hour is covered


def test_each_scene_found_at_its_time_by_words_and_by_a_frame(tmp_path, cli, trained,
                                                             monkeypatch):
    import cli as cli_module

    monkeypatch.setattr(cli_module.stdout, "width", 250)  # the table's path cell on one line
    root = tmp_path / "media"
    root.mkdir()
    write_video(root / "clip.mp4")
    db = tmp_path / "db"
    run = cli("index", root, "--db", db, "--pretrained", trained, "--video-every", EVERY,
              "--json")
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["run"]["videos"] == 1
    for caption, start in zip(CAPTIONS, STARTS, strict=True):
        found = cli("search", caption, "--to", "videos", "--db", db, "--json", "-k", "1")
        best = json.loads(found.stdout)
        assert best["kind"] == "video" and abs(best["time"] - start) <= EVERY, (caption, best)
    frame_at(root / "clip.mp4", 3.0, 96).save(tmp_path / "frame.png")
    found = cli("search", "--image", tmp_path / "frame.png", "--to", "videos", "--db", db,
                "--json", "-k", "1")
    assert abs(json.loads(found.stdout)["time"] - STARTS[1]) <= EVERY
    table = cli("search", CAPTIONS[2], "--to", "videos", "--db", db, "-k", "1")
    assert "clip.mp4 @ 00:04" in table.stdout or "clip.mp4 @ 00:03" in table.stdout
    images = cli("search", CAPTIONS[1], "--to", "images", "--db", db, "--json")
    assert images.stdout.strip() == ""  # video frames only with --with-videos
    with_videos = cli("search", CAPTIONS[1], "--to", "images", "--with-videos", "--db", db,
                      "--json", "-k", "1")
    assert json.loads(with_videos.stdout)["kind"] == "video"


def test_broken_videos_are_skipped_and_runs_repeat_nothing(tmp_path, cli):
    root = tmp_path / "media"
    root.mkdir()
    data = write_video(root / "clip.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "notes.mp4").write_text("this is not a video\n" * 20)
    db = tmp_path / "db"
    args = ("index", root, "--db", db, "--model", "retriever-tiny", "--pretrained", "none",
            "--video-every", EVERY, "--json")
    first = cli(*args)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)["run"]
    assert report["videos"] == 1 and report["frames"] >= 3
    assert sorted(Path(f["path"]).name for f in report["failures"]) == ["notes.mp4",
                                                                        "truncated.mp4"]
    assert "truncated.mp4: not a readable video" in first.stderr
    again = json.loads(cli(*args).stdout)["run"]
    assert again["encoded"] == 0 and again["known_failures"] == 2
    (root / "clip.mp4").rename(root / "renamed.mp4")
    moved = json.loads(cli(*args).stdout)["run"]
    assert moved["reused"] == 1 and moved["encoded"] == 0 and moved["removed"] == 1
    assert json.loads(moved and cli("info", "--db", db, "--json").stdout)["files"] == 1


def test_upgrade_to_version_6_adds_item_time(tmp_path):
    """A store from before videos (every migration up to 6) opens; old items have no time, new
    video frames keep theirs."""
    import numpy as np
    from sqlalchemy import text

    from index.kinds import VIDEO
    from index.migrations import MIGRATIONS
    from index.records import FileRecord, ItemRecord
    from index.store import Store
    from tests.helpers import engine_at_version

    url = f"sqlite:///{tmp_path / 's.db'}"
    engine = engine_at_version(url, [v for v, _, _ in MIGRATIONS].index(6))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO files VALUES (1, '/m/a.jpg', 'image', 'h', 1, 1234.5, "
                          "2, 2, NULL, 0, 1234.5)"))
        conn.execute(text("INSERT INTO items VALUES (1, 1, 'image', 0, NULL)"))
    engine.dispose()
    store = Store(url)
    assert store.items([1])[1].time is None
    vector = np.ones(4, np.float32) / 2
    written = store.write_files([(FileRecord("/m/clip.mp4", VIDEO, "v", 9, 1.0), [
        ItemRecord(VIDEO, 0, None, vector, 0.0), ItemRecord(VIDEO, 1, None, vector, 83.0)])])
    ids = written.added[VIDEO][0].tolist()
    assert [store.items(ids)[i].time for i in ids] == [0.0, 83.0]
    assert store.counts().videos == 2


def test_server_rows_and_html_page_play_the_video_from_its_moment(tmp_path, cli):
    from starlette.testclient import TestClient

    from retriever.library.collection import Collection
    from retriever.present.html_page import write_html
    from retriever.search.query import Query, search
    from retriever.server.app import ServerSettings, create_app

    root = tmp_path / "media"
    root.mkdir()
    write_video(root / "clip.mp4")
    db = tmp_path / "db"
    assert cli("index", root, "--db", db, "--model", "retriever-tiny", "--pretrained", "none",
               "--video-every", EVERY).exit_code == 0
    from retriever.library.pinned_encoder import pinned_encoder

    collection = Collection.open(db)
    encoder = pinned_encoder(collection, settings=user_settings())
    app = create_app(collection, encoder, ServerSettings())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        rows = client.get("/api/search", params={"text": "x", "target": "videos"}).json()
        row = rows["results"][0]
        assert row["file"].endswith(f"#t={row['time']:g}")
        thumb = client.get(row["thumbnail"])
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    results = search(collection, encoder, Query(text="x", target="videos"))
    page = write_html(results, tmp_path / "page.html", "videos", collection).read_text()
    assert "<video" in page and f"clip.mp4#t={results[0].time:g}" in page
