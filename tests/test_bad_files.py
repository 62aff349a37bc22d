"""One generated folder with every kind of bad input, indexed in one real CLI run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .helpers import write_photo

ROOT = Path(__file__).resolve().parents[1]
# As root, permission bits do not stop reads; without capabilities they do.
DROP_CAPS = (["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
             if os.geteuid() == 0 and shutil.which("setpriv") else [])


def good_files(root: Path) -> list[str]:
    """Unusual but valid inputs: each must be indexed and searchable."""
    write_photo(root / "plain.jpg", (200, 0, 0))
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(root / "deep16.png")
    palette = Image.new("P", (30, 30), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.save(root / "palette-transparent.png", transparency=0)
    frames = [Image.new("RGB", (20, 20), c) for c in [(0, 0, 255), (255, 0, 0)]]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (50, 20), (0, 90, 90)).save(root / "rotated.jpg", exif=exif)
    write_photo(root / "name with spaces.jpg", (10, 10, 10))
    write_photo(root / "ünïcødé 写真.jpg", (20, 20, 20))
    write_photo(root / "new\nline.jpg", (30, 30, 30))
    write_photo(Path(os.fsdecode(bytes(root) + b"/bad-\xff-bytes.jpg")), (40, 40, 40))
    (root / "huge.txt").write_text("many words here " * 50_000)  # 800 kB, over the cap below
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    return ["plain.jpg", "cmyk.jpg", "deep16.png", "palette-transparent.png", "animated.gif",
            "rotated.jpg", "name with spaces.jpg", "ünïcødé 写真.jpg", "new\nline.jpg",
            "bad-\\xff-bytes.jpg", "huge.txt", "latin1.txt"]


def bad_files(root: Path) -> list[str]:
    """Inputs that must each be reported once with a reason, the run going on."""
    good = root / "plain.jpg"
    (root / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (root / "empty.jpg").write_bytes(b"")
    (root / "text-named.jpg").write_text("I am not a picture")
    Image.new("RGB", (400, 300)).save(root / "bomb.png")  # over the --max-pixels cap below
    (root / "broken-link.jpg").symlink_to(root / "nowhere.jpg")
    (root / "loop-a.jpg").symlink_to(root / "loop-b.jpg")
    (root / "loop-b.jpg").symlink_to(root / "loop-a.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "socket.jpg"))  # a file that exists but cannot be opened
    header = bytearray(good.read_bytes())  # plain.jpg's SOF0 says 20000x20000: a bomb's header
    at = header.index(b"\xff\xc0") + 5
    header[at:at + 4] = (20_000).to_bytes(2, "big") * 2
    (root / "bomb-header.jpg").write_bytes(bytes(header))
    os.mkfifo(root / "pipe.txt")  # reading it waits for a writer, forever
    (root / "zero.txt").symlink_to("/dev/zero")  # never ends
    (root / "passwd.txt").symlink_to("/etc/passwd")  # outside the indexed folder
    names = ["truncated.jpg", "corrupt.png", "empty.jpg", "text-named.jpg", "bomb.png",
             "broken-link.jpg", "loop-a.jpg", "loop-b.jpg", "socket.jpg", "bomb-header.jpg",
             "pipe.txt", "zero.txt", "passwd.txt"]
    if DROP_CAPS or os.geteuid() != 0:
        write_photo(root / "locked.jpg", (5, 5, 5)).chmod(0)
        (root / "locked-folder").mkdir()
        write_photo(root / "locked-folder" / "inside.jpg", (6, 6, 6))
        (root / "locked-folder").chmod(0)
        names += ["locked.jpg", "locked-folder"]
    return names


def test_every_bad_file_is_reported_once_and_good_files_are_searchable(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    good, bad = good_files(media), bad_files(media)
    db = tmp_path / "index"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    cmd = [sys.executable, str(ROOT / "cli.py"), "index", str(media), "--db", str(db),
           "--model", "retriever-tiny", "--pretrained", "none", "--max-pixels", "100000",
           "--max-text-bytes", "100000", "--json"]
    try:
        proc = subprocess.run(DROP_CAPS + cmd, capture_output=True, text=True, env=env,
                              timeout=300)
    finally:
        (media / "locked-folder").chmod(0o755) if (media / "locked-folder").exists() else None
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)["run"]
    failed = [Path(f["path"]).name for f in run["failures"]]
    assert sorted(failed) == sorted(bad), proc.stderr
    reported = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(reported) == len(bad)  # once each
    assert any("exceeds the 100000-pixel cap" in line for line in reported)
    assert any("bomb-header.jpg: 20000x20000 exceeds" in line for line in reported)

    info = json.loads(subprocess.run([sys.executable, str(ROOT / "cli.py"), "info", "--db",
                                      str(db), "--json"], capture_output=True, text=True,
                                     env=env).stdout)
    assert sorted(Path(f["path"]).name for f in info["failures"]) == sorted(bad)
    search = subprocess.run([sys.executable, str(ROOT / "cli.py"), "search", "anything",
                             "--to", "all", "--db", str(db), "-k", "100", "--json"],
                            capture_output=True,
                            text=True, env=env)
    found = {Path(json.loads(line)["path"]).name for line in search.stdout.splitlines()}
    assert found == set(good)
