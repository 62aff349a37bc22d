"""A command timed in a fresh process, and the machine it ran on: what bench.twins and
bench.before_after share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (the child's, all threads) of `command`, from spawn to exit.
    Raises RuntimeError, with the end of its stderr, when it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read() if child.stderr else b""
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}:\n"
                           f"{stderr.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def precompile(tree: Path) -> None:
    """`tree`'s modules compiled to __pycache__, as an installed package's are: with
    PYTHONDONTWRITEBYTECODE set, each cold command would compile them again."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", "cli.py", "retriever", "index"],
                   cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)


def cli_env(cache: Path, tree: Path | None = None) -> dict[str, str]:
    """The CLI on the CPU, its export cache and user registry under `cache`, nothing chosen by
    the caller's environment; `tree`: import the project from there (PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVER_")}
    env = {**env, "CUDA_VISIBLE_DEVICES": "", "NO_COLOR": "1", "COLUMNS": "200",
           "XDG_CACHE_HOME": str(cache), "XDG_DATA_HOME": str(cache / "data")}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env
