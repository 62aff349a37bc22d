"""A one-off text query, stage by stage: the steps `retriever search QUERY --db IDX` takes
(cli.search, then retriever.search.query.search_index), each timed in a fresh process.

    python -m bench.query_stages --db IDX [--runs 3] [--query "a photo of a dog"]

Prints one row per stage: min-max milliseconds over the runs, wall and CPU (all threads; on a
shared machine the steadier of the two), and the runs' wall time from spawn to exit. Run it with the
project's modules compiled (`python -m compileall -q cli.py retriever index`) to see what an
installed retriever does; PYTHONDONTWRITEBYTECODE=1 without them compiles each at every start.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Runs in the child, in this order: the stage names and what cli.search does at each.
CHILD = r"""
import sys, time
marks = [("start", time.perf_counter(), time.process_time())]
def mark(name):
    marks.append((name, time.perf_counter(), time.process_time()))
db, text = sys.argv[1], sys.argv[2]
import cli
mark("import cli (typer, rich, retriever.errors, media constants)")
from pathlib import Path
from retriever.library.locations import find_index_dir
from retriever.search.query import Query
from retriever.server.remote import search_server
mark("import locations, query, remote")
request = Query(text=text, k=10)
settings = cli.read_settings()
index_dir = find_index_dir(Path(db), data_dir=settings.data_dir)
assert search_server(index_dir, request, settings.xdg_runtime_dir) is None, \
    "a server answers: stop it first"
mark("locate the index, look for a server (serve.json)")
from retriever.library.collection import Collection
from retriever.library.pinned_encoder import pinned_encoder
mark("import Collection, pinned_encoder")
from index.ann import configured
collection = Collection.open(index_dir, configured(settings), reading=True)
mark("open the store")
encoder = pinned_encoder(collection, None, "auto", quick_start=True, settings=settings)
mark("model record, OrtEncoder, model pin")
encoder.tokenizer
mark("tokenizer")
encoder._session("textual.onnx")
mark("text session: import onnxruntime, create it")
from retriever.search.query import search
results = search(collection, encoder, request)
mark("encode, vector search, the SQL lookup of the results")
for r in results:
    cli.stdout.print(cli.visible(r.path), markup=False)
mark("print")
import json
sys.stderr.write("STAGES " + json.dumps(marks) + "\n")
"""


def one_run(db: Path, query: str) -> tuple[list[tuple[str, float, float]], float]:
    """The stages' wall and CPU milliseconds in one fresh process, and its whole wall time
    (s)."""
    launcher = ("import os, subprocess, sys, time; t = time.perf_counter(); "
                "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
                "stderr=subprocess.PIPE, text=True); "
                "print(time.perf_counter() - t); print(p.stderr)")
    out = subprocess.run([sys.executable, "-c", launcher, sys.executable, "-c", CHILD,
                          str(db), query], capture_output=True, text=True, check=True).stdout
    wall, _, stderr = out.partition("\n")
    line = next((s for s in stderr.splitlines() if s.startswith("STAGES ")), None)
    if line is None:
        raise RuntimeError(f"the query failed:\n{stderr[-2000:]}")
    marks = json.loads(line[len("STAGES "):])
    return [(name, (t - marks[i][1]) * 1000, (cpu - marks[i][2]) * 1000)
            for i, (name, t, cpu) in enumerate(marks[1:])], float(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--query", default="a photo of a dog")
    args = parser.parse_args()
    one_run(args.db, args.query)  # untimed: the page cache warm, tokenizer.bpe written
    runs = [one_run(args.db, args.query) for _ in range(args.runs)]
    print("| stage | ms | CPU ms |\n|---|---|---|")
    for n, (name, _, _) in enumerate(runs[0][0]):
        print(f"| {name} | {span([s[n][1] for s, _ in runs])} | "
              f"{span([s[n][2] for s, _ in runs])} |")
    print(f"| total in the process | {span([sum(x[1] for x in s) for s, _ in runs])} | "
          f"{span([sum(x[2] for x in s) for s, _ in runs])} |")
    walls = [wall for _, wall in runs]
    print(f"\nwhole process, spawn to exit: {min(walls):.2f}-{max(walls):.2f} s")


def span(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


if __name__ == "__main__":
    main()
