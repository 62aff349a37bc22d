"""The Ray engine against the local engine on this machine: images/s of each and the difference.

    python -m bench.engines --n 200 1000 [--runs 3] [--write]

Each run is `retriever index FOLDER --engine ...` in a process of its own, as a user runs it, on
a fresh index folder of bench/photos.py's 1024x768 JPEGs, with retriever-tiny (random weights,
torch): its model costs little, so what is timed is what each engine adds around it. Engines,
in turn within each round (medians over --runs rounds):

  local       reader threads in the indexing process, the model there too
  ray         --engine ray: a Ray of its own, started and stopped inside the run (its workers
              at nice 0: ray_engine.WORKER_NICENESS)
  ray-joined  --engine ray --ray-address: joining a `ray start --head --num-cpus 2
              --include-dashboard=false` this bench starts once (timed: "Ray start") and stops;
              its workers at Ray's default nice 15 unless RAY_worker_niceness is set

With two sizes or more, each engine's steady-state rate is the marginal one between the two
largest, (N2 - N1) / (T2 - T1): what a run costs whatever its size (Python, the model, starting
Ray and its encoder actor) cancels out, once N1 is large enough that reading outlasts the
actor's start (below that, Ray reads the extra photos while its actor loads, for free).
Prints a markdown table; --write also puts it in bench/RESULTS.md (section "engines").
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.photos import photo_folder
from bench.results import machine_line, write_section
from bench.speed import free_port, ours_env, run

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
ENGINES = ("local", "ray", "ray-joined")
HEAD_CPUS = 2  # the joined cluster's CPUs, as a 2-core machine has
HEAD_TIMEOUT = 120.0  # seconds `ray start --head` may take to say it runs
ENCODED = re.compile(r"encoded (\d+) images")
STARTED = re.compile(rb"ray start --address='([^']+)'")  # what the head says to join it by


@dataclass(frozen=True)
class Head:
    address: str  # HOST:PORT to pass as --ray-address
    start_s: float  # wall seconds from `ray start --head` to its saying how to join it


def index_cmd(folder: Path, db: Path, engine: str, head: Head | None) -> list[str]:
    cmd = [sys.executable, str(ROOT / "cli.py"), "index", str(folder), "--db", str(db),
           "--model", "retriever-tiny", "--pretrained", "none", "--backend", "torch",
           "--engine", "local" if engine == "local" else "ray"]
    if engine == "ray-joined":
        cmd += ["--ray-address", head.address if head else ""]
    return cmd


def timed_index(folder: Path, n: int, engine: str, head: Head | None) -> float:
    """Wall seconds of one `retriever index` run on a fresh index; it must encode all `n`.
    RuntimeError, with the end of its stderr (a Python stack if it crashed), if it failed."""
    env = {**ours_env(), "PYTHONFAULTHANDLER": "1"}
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        proc = run(index_cmd(folder, Path(tmp) / "db", engine, head), env=env)
    found = ENCODED.search(proc.stdout)
    if not found or int(found.group(1)) != n:
        raise RuntimeError(f"{engine}: expected {n} images encoded, got:\n{proc.stdout[-500:]}")
    return proc.seconds


@contextmanager
def ray_head(work: Path) -> Iterator[Head]:
    """A Ray head of HEAD_CPUS CPUs for this bench alone: `ray start --head --block`, stopped
    by SIGTERM to that process, which stops what it started (never `ray stop`: that stops
    every Ray of this machine, others' too). Its files are under `work`, not /tmp/ray, where
    the address it leaves behind would be joined by a later `ray.init()` without one."""
    port, log = free_port(), work / "head.log"
    with open(log, "wb") as out:
        began = time.perf_counter()
        head = subprocess.Popen(
            [str(RAY), "start", "--head", "--port", str(port), "--num-cpus", str(HEAD_CPUS),
             "--include-dashboard=false", "--temp-dir", str(work / "ray"), "--block"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ours_env())
    try:
        while not (said := STARTED.search(log.read_bytes())):
            if head.poll() is not None or time.perf_counter() - began > HEAD_TIMEOUT:
                raise RuntimeError(f"ray start --head failed:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield Head(said.group(1).decode(), time.perf_counter() - began)
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)


def measure(sizes: list[int], runs: int, engines: tuple[str, ...]
            ) -> tuple[dict, Head | None, list[str]]:
    """{(n, engine): [wall seconds of each run]}; the head ray-joined joined; the runs that
    failed (left out of the medians), a line each. Each round runs every size and engine, the
    engines in reverse order every other round, so a load that drifts (this machine is shared)
    falls on all of them alike."""
    folders = {n: photo_folder("large", n) for n in sizes}
    seconds: dict[tuple[int, str], list[float]] = {(n, e): [] for n in sizes for e in engines}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="engines-head-") as tmp, (
            ray_head(Path(tmp)) if "ray-joined" in engines else _no_head()) as head:
        for round_ in range(runs):
            for n in sizes:
                for engine in engines[::-1] if round_ % 2 else engines:
                    name = f"round {round_ + 1}/{runs}, n={n}, {engine}"
                    try:
                        took = timed_index(folders[n], n, engine, head)
                    except RuntimeError as err:
                        print(f"{name}: FAILED {err}", file=sys.stderr)
                        failed.append(f"{name}: {str(err).splitlines()[0][-120:]}")
                        continue
                    seconds[(n, engine)].append(took)
                    print(f"{name}: {took:.2f} s ({n / took:.1f} images/s), load {_load()}",
                          file=sys.stderr)
    return seconds, head, failed


@contextmanager
def _no_head() -> Iterator[None]:
    yield None


def table(seconds: dict, sizes: list[int], engines: tuple[str, ...]) -> str:
    """Rows per size and engine, then each engine's steady-state (marginal) rate; "-" where
    every run of one failed."""
    median = {key: statistics.median(runs) for key, runs in seconds.items() if runs}
    rows = ["| photos | engine | wall s, median (min-max) | images/s | images/s vs local |",
            "|---|---|---|---|---|"]
    for n in sizes:
        local = n / median[(n, "local")] if (n, "local") in median else None
        for engine in engines:
            if (n, engine) not in median:
                rows.append(f"| {n} | {engine} | every run failed | - | - |")
                continue
            runs, rate = seconds[(n, engine)], n / median[(n, engine)]
            rows.append(f"| {n} | {engine} | {median[(n, engine)]:.2f} ({min(runs):.2f}-"
                        f"{max(runs):.2f}) | {rate:.1f} | {_versus(rate, local, engine)} |")
    small, large = sorted(sizes)[-2:] if len(sizes) > 1 else (sizes[0], sizes[0])
    marginal = {e: (large - small) / (median[(large, e)] - median[(small, e)]) for e in engines
                if large > small and {(small, e), (large, e)} <= median.keys()}
    for engine, rate in marginal.items():  # negative: the load changed more than the work did
        shown = (f"{rate:.1f} | {_versus(rate, marginal.get('local'), engine)}" if rate > 0
                 else "- (noise: the larger folder took less time) | -")
        rows.append(f"| {small}->{large}, steady state | {engine} | "
                    f"+{large - small} photos in {(large - small) / rate:+.2f} s | {shown} |")
    return "\n".join(rows)


def _versus(rate: float, local: float | None, engine: str) -> str:
    if engine == "local" or not local:
        return "-"
    return f"{(rate / local - 1) * 100:+.0f}%"


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200], help="Photos per folder.")
    parser.add_argument("--runs", type=int, default=3, help="Rounds; medians are reported.")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--write", action="store_true",
                        help="Also write the table into bench/RESULTS.md.")
    args = parser.parse_args()
    if not RAY.is_file() or shutil.which(str(RAY)) is None:
        parser.error(f"{RAY}: no `ray` command beside this Python: pip install -e '.[ray]'")
    engines = tuple(e for e in ENGINES if e in args.engines)
    sizes = sorted(set(args.n))
    before = _load()
    seconds, head, failed = measure(sizes, args.runs, engines)
    machine = f"{machine_line()}; load average {before} before, {_load()} after"
    nice = os.environ.get("RAY_worker_niceness", "15 (Ray's default)")  # noqa: SIM112 Ray's
    start = (f"\nRay start (`ray start --head`, for ray-joined): {head.start_s:.1f} s; its "
             f"workers at nice {nice}\n") if head else ""
    failures = "".join(f"\nFailed, left out: {line}" for line in failed)
    body = table(seconds, sizes, engines) + "\n" + start + failures
    command = "python -m bench.engines " + " ".join(sys.argv[1:])
    print(f"{machine}\nCommand: `{command}`\n\n{body}")
    if args.write:
        write_section("engines", "Ray engine against the local engine, one machine", body,
                      command, machine)


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # joins the bench's head with its token
    main()
