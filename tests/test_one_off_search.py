"""A one-off `retriever search` from the shell imports only what it uses: on a current SQLite
index, neither SQLAlchemy (the store is read through sqlite3), nor torch, nor FAISS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from retriever.encoding.onnx_export import export
from retriever.encoding.ort_encoder import OrtEncoder

ROOT = Path(__file__).resolve().parent.parent
PROBE = """import sys, runpy
sys.argv = ['retriever', 'search', *sys.argv[1:]]
try:
    runpy.run_module('cli', run_name='__main__')
except SystemExit as e:
    assert not e.code, e.code
print('LOADED', sorted(m for m in ('sqlalchemy', 'torch', 'faiss', 'open_clip')
                       if m in sys.modules), file=sys.stderr)
"""


def search(*args: object) -> tuple[list[dict], str]:
    run = subprocess.run([sys.executable, "-c", PROBE, *map(str, args), "--json"], cwd=ROOT,
                         env={**os.environ, "RETRIEVER_BACKEND": "auto"}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    loaded = [line for line in run.stderr.splitlines() if line.startswith("LOADED")][-1]
    return [json.loads(line) for line in run.stdout.splitlines()], loaded


def test_a_one_off_search_imports_no_sqlalchemy_torch_or_faiss(tmp_path, cli, monkeypatch,
                                                               media_folder):
    monkeypatch.setenv("RETRIEVER_BACKEND", "auto")
    db = tmp_path / "idx"
    indexed = cli("index", media_folder, "--db", db, "--model", "retriever-tiny",
                  "--pretrained", "none")
    assert indexed.exit_code == 0, indexed.output
    rows, loaded = search("a red disc", "--db", db, "--to", "all", "-k", "20")
    assert loaded == "LOADED []"
    # the passage of red.txt, red.jpg's caption, is found as the photo (caption owners)
    assert {Path(r["path"]).name for r in rows} == {"red.jpg", "green.jpg", "blue.jpg",
                                                    "trip.md", "todo.txt"}
    # a filter is one more query of the store, through sqlite3 as well
    photos = media_folder / "photos"
    rows, loaded = search("a red disc", "--db", db, "--in", photos, "--after", "2000-01-01")
    assert loaded == "LOADED []"
    assert len(rows) == 3 and all(r["path"].startswith(str(photos)) for r in rows)


def test_the_quick_start_text_session_gives_the_default_sessions_vectors(tmp_path,
                                                                         tiny_encoder):
    """No prepacking and no fusions change how the sums are taken, not what they are."""
    folder = export(tiny_encoder.loaded, tmp_path / "tiny")
    texts = ["a red disc", "a photo of a dog on a beach at sunset", "word " * 40, "x"]
    quick = OrtEncoder(folder, quick_start=True).encode_texts(texts)
    default = OrtEncoder(folder).encode_texts(texts)
    assert ((quick * default).sum(1) > 0.99999).all()
    assert np.abs(quick - default).max() < 1e-5
