"""bench/RESULTS.md is shared by several benchmarks: each rewrites only its own section,
between `<!-- NAME:start -->` and `<!-- NAME:end -->`, and leaves the rest as it was."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = ("# Benchmark results\n\nEach section says how it was produced; rerun its command to "
          "regenerate it. `make bench` (`python -m bench`) reruns speed and vector-search in "
          "one go; parity is `python -m bench.parity`.\n")


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    from retriever.encoding.cpu import cpu_info

    flags = " ".join(cpu_info().flags) or "none of note"
    return f"{os.cpu_count()} cores ({cpu}; ISA: {flags}), Python {platform.python_version()}"


def write_section(name: str, title: str, body: str, command: str, machine: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = (f"{start}\n## {title}\n\nMeasured {time.strftime('%Y-%m-%d')} on {machine}.\n"
               f"Command: `{command}`\n\n{body}\n{end}")
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip("\n") + "\n\n" + section + "\n")
    RESULTS.write_text(text)
