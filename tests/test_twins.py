"""Parity of the speed twins whose test lives nowhere else (README, Architecture, "Speed twins";
bench/twins.py measures what each saves): `retriever.devices.gpu_visible` tells from the
driver's device file what FAISS's GPU build finds by importing itself and asking CUDA; and
every parity test the README and bench/twins.py name exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# In a fresh process: CUDA reads CUDA_VISIBLE_DEVICES once, when FAISS first asks it
PROBE = """
import json, os, sys
from retriever.devices import gpu_visible
visible = gpu_visible(os.environ.get("CUDA_VISIBLE_DEVICES"))
import faiss
gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
print(json.dumps([visible, gpus]))
"""


@pytest.mark.parametrize("hidden", [None, "", "0"])
def test_gpu_visible_agrees_with_faiss(hidden):
    """Unset, "" (every GPU hidden) and "0": a GPU is visible exactly when FAISS counts one. On
    a machine without one both say no (a CPU build of FAISS counts none); with a GPU but a
    CPU build of FAISS the test says nothing, as there is nothing to compare with."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if hidden is not None:
        env["CUDA_VISIBLE_DEVICES"] = hidden
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout
    visible, gpus = json.loads(out.strip().splitlines()[-1])
    import faiss

    if visible and not hasattr(faiss, "StandardGpuResources"):
        pytest.skip("a GPU, but FAISS is a CPU build: nothing to compare with")
    assert visible == (gpus > 0)


ROOT = Path(__file__).resolve().parent.parent


def named_tests(text: str) -> set[tuple[str, str]]:
    """(file, test) of each `tests/x.py::test_y` in `text`, and of each bare `test_y` after it
    in the same table cell (a test of the file named last)."""
    found = set()
    for cell in text.split("|"):
        file = None
        for path, name in re.findall(r"(tests/\w+\.py)|(?<![/\w])(test_\w+)(?![\w.])", cell):
            file = path or file
            if name and file:
                found.add((file, name))
    return found


def test_every_named_parity_test_exists():
    """The README's speed-twin table and bench/twins.py name tests that exist, and the table
    names the parity test of every twin the benchmark measures."""
    from bench.twins import twins

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Speed twins"):]
    rows = twins(dict.fromkeys(("db", "photo", "flat", "tokenizer", "blocked", "hf"), Path("x")))
    named = named_tests(section[: section.index("\n\n", section.index("| twin |"))])
    measured = {tuple(row.parity.split("::")) for row in rows}
    assert len(rows) == 11 and measured <= named and len(named) >= 11
    for file, name in sorted(named):
        assert f"def {name}(" in (ROOT / file).read_text(), f"{file}::{name}"
