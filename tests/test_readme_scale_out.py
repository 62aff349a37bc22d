"""README's "When one machine is not enough" block, run as written (issue 13).

The block's commands run one by one in bash, in order, with only its placeholders replaced:
dbhost, me and the database name by a throw-away PostgreSQL's (tests/postgres.py), HEAD:6379 by
a Ray head on 127.0.0.1 (2 CPUs, no dashboard, free ports), /mnt/photos by a few generated
photos, serve's 8765 by a free port. The default model needs weights from the network, so
$RETRIEVER_MODEL/$RETRIEVER_PRETRAINED pick retriever-tiny with random weights, which the
commands read as they would --model/--pretrained. Not run: `pip install` (its extras are
checked against pyproject.toml) and the worker's `ray start --address` (a second machine).
`serve` is asked one search, bounded, then stopped. The Ray processes are ended by pid, found
by the folder they were started in: `ray stop` would end every Ray on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from .helpers import COLOURS, write_photo

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## When one machine is not enough"
BIN = Path(sys.executable).parent  # the project's environment: retriever, ray
PHOTOS = 5
TIMEOUT = 300  # seconds any one command may take
pytestmark = [pytest.mark.ray, pytest.mark.postgres, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def readme_commands() -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index(HEADING):], re.S)
    assert block, f"no sh code block under {HEADING!r} in README.md"
    joined = block.group(1).replace("\\\n", " ")
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines())
    return [" ".join(line.split()) for line in lines if line]


@dataclass
class Place:
    """What the block's placeholders stand for here."""

    db_url: str  # postgresql+psycopg://... of the database `createdb` makes
    db_host: str  # a host name, or the folder of a unix socket
    db_user: str
    db_name: str
    ray_port: int
    photos: Path
    serve_port: int

    def substitute(self, command: str) -> str:
        command = (command
                   .replace("postgresql+psycopg://me@dbhost/photos", shlex.quote(self.db_url))
                   .replace("-h dbhost -U me photos", f"-h {shlex.quote(self.db_host)} "
                            f"-U {shlex.quote(self.db_user)} {self.db_name}")
                   .replace("HEAD:6379", f"127.0.0.1:{self.ray_port}")
                   .replace("--port 6379", f"--port {self.ray_port}")
                   .replace("/mnt/photos", shlex.quote(str(self.photos)))
                   .replace("--port 8765", f"--port {self.serve_port}"))
        for placeholder in ("dbhost", "HEAD", "/mnt/", "me@"):
            assert placeholder not in command, f"{placeholder} left in: {command}"
        return command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def required_or_skip(why: str) -> NoReturn:
    if os.environ.get("RETRIEVER_TEST_POSTGRES_REQUIRED"):
        pytest.fail(f"required here: {why}")
    pytest.skip(why)


def pg_programs() -> Path:
    """The folder holding createdb: pg_ctl's, as tests/postgres.py finds it (a link followed),
    else createdb's on $PATH."""
    from .postgres import Unavailable, _programs

    try:
        folder = (_programs() / "pg_ctl").resolve().parent
    except Unavailable as why:
        required_or_skip(str(why))
    if (folder / "createdb").is_file():
        return folder
    found = shutil.which("createdb")
    if not found:
        required_or_skip(f"no createdb in {folder} or on $PATH: apt-get install postgresql")
    return Path(found).parent


@pytest.fixture
def ray_folder() -> Iterator[Path]:
    """A short folder for $RAY_TMPDIR (unix socket paths are limited to 107 bytes); every
    process holding it in its command line or open files is ended after the test."""
    if not (BIN / "ray").is_file():
        required_or_skip(f"Ray is not installed in {BIN}: pip install -e '.[ray]'")
    folder = Path(tempfile.mkdtemp(prefix="rso-"))
    try:
        yield folder
    finally:
        end_processes_in(folder)
        shutil.rmtree(folder, ignore_errors=True)


def end_processes_in(folder: Path) -> None:
    """SIGTERM, then SIGKILL after 3 s, each process that names `folder` (by pid): Ray's
    agents outlive the raylet that started them, and rename themselves (ray::DashboardAgent),
    but keep their log files there open."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in pids_naming(folder):
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids_naming(folder) and time.monotonic() < deadline:
            time.sleep(0.2)


def pids_naming(folder: Path) -> list[int]:
    """Live processes (/proc) whose command line or open files name `folder`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            named = str(folder).encode() in (entry / "cmdline").read_bytes()
            fds = list((entry / "fd").iterdir()) if not named else []
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            with suppress(OSError):
                named = named or os.readlink(fd).startswith(str(folder))
        if named and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


@pytest.fixture
def place(postgres, tmp_path) -> Iterator[Place]:
    """The throw-away server's database name, address and user; photos to index."""
    from sqlalchemy.engine import make_url

    photos = tmp_path / "photos"
    for i, colour in enumerate(list(COLOURS.values()) + [(240, 200, 40), (20, 20, 20)]):
        write_photo(photos / f"photo-{i}.jpg", colour)
    admin = make_url(postgres.admin_url)
    name = f"retriever_readme_{uuid.uuid4().hex[:12]}"
    postgres.made.append(name)  # dropped after, whether or not `createdb` made it
    url = admin.set(database=name).render_as_string(hide_password=False)
    host = admin.host or str(admin.query.get("host") or "")
    try:
        yield Place(url, host, admin.username or "postgres", name, free_port(), photos,
                    free_port())
    finally:
        postgres.drop_databases()


def environment(place: Place, ray_folder: Path, home: Path, programs: Path) -> dict[str, str]:
    from sqlalchemy.engine import make_url

    url = make_url(place.db_url)
    env = {**os.environ, "PATH": f"{BIN}:{programs}:{os.environ['PATH']}", "HOME": str(home),
           "RAY_TMPDIR": str(ray_folder), "RETRIEVER_MODEL": "retriever-tiny",
           "RETRIEVER_PRETRAINED": "none", "HF_HUB_OFFLINE": "1", "COLUMNS": "1000",
           # Ray on Linux turns --node-ip-address 127.0.0.1 into the machine's own address and
           # listens on every interface unless it believes it runs outside a cluster: pinned
           # to loopback, as every Ray a test starts (retriever.ingest.ray_engine._loopback)
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)  # the block sets it
    if url.port:
        env["PGPORT"] = str(url.port)  # createdb's; the URL carries its own
    if url.password:
        env["PGPASSWORD"] = url.password
    return env


def head_node(command: str, place: Place) -> str:
    """`ray start --head` as a test's: 127.0.0.1, 2 CPUs, no dashboard, free ports only."""
    return (f"{command} --node-ip-address 127.0.0.1 --num-cpus 2 --include-dashboard false "
            f"--disable-usage-stats --dashboard-agent-listen-port {free_port()}")


def run(command: str, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=env["HOME"])
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stderr[-3000:]}"
    return done.stdout


def check_extras(command: str) -> None:
    """`pip install -e '.[a,b]'`: each extra is declared in pyproject.toml."""
    extras = re.search(r"\.\[([\w,-]+)\]", command)
    assert extras, command
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
    declared = re.findall(r"^([\w-]+) = ", section.split("\n[")[0], re.M)
    assert set(extras.group(1).split(",")) <= set(declared), (extras.group(1), declared)


def served_paths(command: str, env: dict[str, str], port: int) -> list[str]:
    """Start `retriever serve`, ask /api/search once it answers (within TIMEOUT), stop it."""
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], env=env, cwd=env["HOME"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT  # a loaded machine starts it slowly
        while True:
            assert server.poll() is None, f"{command} exited: {server.stderr.read()}"
            try:
                urllib.request.urlopen(f"{base}/api/info", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"{command}: no answer in {TIMEOUT} s"
                time.sleep(0.3)
        with urllib.request.urlopen(f"{base}/api/search?text=dog+on+a+beach&k=50",
                                    timeout=30) as answer:
            return [hit["path"] for hit in json.load(answer)["results"]]
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_block(place: Place, env: dict[str, str]) -> dict[str, object]:
    """Each command in order; what the checks need: index's and search's output, and the
    paths serve's /api/search returns."""
    seen: dict[str, object] = {}
    for original in readme_commands():
        command = place.substitute(original)
        if command.startswith("pip install"):
            check_extras(command)
        elif command.startswith("ray start --address"):
            seen["worker"] = command  # another machine's
        elif command.startswith("export "):
            name, _, value = shlex.split(command)[1].partition("=")
            env[name] = value
        elif command.startswith("ray start --head"):
            run(head_node(command, place), env)
            seen["head"] = command
        elif command.startswith("retriever serve"):
            seen["served"] = served_paths(command, env, place.serve_port)
        else:
            seen[" ".join(command.split()[:2])] = run(command, env)
    return seen


def test_the_scale_out_block_runs_as_written(place, ray_folder, tmp_path):
    programs = pg_programs()
    (tmp_path / "home").mkdir()
    env = environment(place, ray_folder, tmp_path / "home", programs)
    seen = run_block(place, env)
    assert {"head", "worker", "createdb -h", "ray get-auth-token", "retriever index",
            "retriever search", "served"} <= set(seen), sorted(seen)
    photos = sorted(str(p) for p in place.photos.iterdir())
    assert len(photos) == PHOTOS
    assert f"encoded {PHOTOS} images" in str(seen["retriever index"])
    listed = str(seen["retriever search"])  # a table; long folders shortened to …/photos/
    names = [Path(p).name for p in photos]
    assert [n for n in names if listed.count(f"/photos/{n}") == 1] == names, listed
    assert listed.count(".jpg") == PHOTOS, listed
    assert sorted(seen["served"]) == photos  # type: ignore[call-overload]
    assert_in_postgres(place, tmp_path / "home" / "photos-index")
    assert_encoded_on_the_cluster(ray_folder)


def assert_in_postgres(place: Place, index: Path) -> None:
    """The store is the PostgreSQL database: its rows, and no store.db in the index folder."""
    from sqlalchemy import create_engine, text

    engine = create_engine(place.db_url)
    try:
        with engine.connect() as conn:
            counts = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                      for table in ("files", "items", "vectors")}
    finally:
        engine.dispose()
    assert counts == {"files": PHOTOS, "items": PHOTOS, "vectors": PHOTOS}
    assert index.is_dir() and not (index / "store.db").exists()


def assert_encoded_on_the_cluster(ray_folder: Path) -> None:
    """The head's session logs show `retriever index` joined it as a driver and that the
    encoder actors ran there."""
    logs = next(ray_folder.glob("ray/session_latest/logs"))
    assert list(logs.glob("python-core-driver-*.log")), sorted(p.name for p in logs.iterdir())
    actors = [p for p in logs.glob("worker-*.out") if "_EncoderActor" in p.read_text()]
    assert actors, "no encoder actor ran on the cluster"
