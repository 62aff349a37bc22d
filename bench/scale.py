"""Scale: a million synthetic items through the store, the streamed index build and a server.

    python -m bench.scale --rows 1000000 --dim 512 [--postgres-rows N] [--queries 200]

Items are clustered unit vectors (bench/vector_search.py's `clustered`) with made-up paths and
file rows, written through `Store.write_files` in batches of BATCH files, as `retriever index`
writes them (one transaction a batch). Each step runs in a child process of its own (its wall
time and peak RSS from os.wait4, bench/speed.py's launcher):

  ingest   rows/s into SQLite, and into PostgreSQL (a throw-away cluster, tests/postgres.py)
  build    the FAISS index built from the SQLite store by streaming (`retriever index` would,
           the index being stale): time, peak RSS, the index file's size
  delta    1% more items, then the save: a delta file, not the whole index rewritten
  recall   recall@10 of the saved index against exact search (streamed over the store)
  serve    `retriever serve` on 127.0.0.1: warm p50/p95 of "more like this" item queries (no
           encoder in the way) and of text queries (text tower of a random ViT-B-32 included)
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.results import machine_line, write_section

WORK = Path(__file__).with_name(".work") / "scale"
BATCH = 2000  # files a transaction, as `retriever index --batch-size` would commit them
MODEL = ("ViT-B-32", "none")  # 512-d; random weights: serve encodes text queries with it
QUERY_SEED = 2


def vectors_for(start: int, count: int, dim: int):
    """Vectors of rows start..start+count: the same whichever batches ask for them."""
    from bench.vector_search import clustered

    return clustered(count, dim, seed=1000 + start)


def ingest(url: str, rows: int, dim: int) -> dict:
    """Write `rows` image files, one item each, in transactions of BATCH; seconds in writes."""
    from index.store import IMAGE, FileRecord, ItemRecord, ModelRecord, Store

    store = Store(url)
    store.set_model(ModelRecord(*MODEL, dim))
    writing = 0.0
    for start in range(0, rows, BATCH):
        count = min(BATCH, rows - start)
        vectors = vectors_for(start, count, dim)
        batch = [(FileRecord(f"/bench/scale/{i // 1000:04d}/{i:07d}.jpg", IMAGE,
                             hashlib.sha256(str(i).encode()).hexdigest(), 200_000,
                             1.6e9 + i, 1024, 768, None, 1.6e9 + i),
                  [ItemRecord(IMAGE, 0, None, vectors[i - start])])
                 for i in range(start, start + count)]
        began = time.perf_counter()
        store.write_files(batch)
        writing += time.perf_counter() - began
    store.close()
    return {"rows": rows, "write_s": writing}


def build(directory: str) -> dict:
    """Save a collection whose index is missing: rebuilt from the store by streaming."""
    from index.ann import AnnConfig
    from index.store import IMAGE
    from retriever.library.collection import Collection

    collection = Collection.open(Path(directory), AnnConfig())
    began = time.perf_counter()
    with collection.writing():
        collection.save()
    index = collection.vectors(IMAGE)
    return {"build_s": time.perf_counter() - began, "kind": index.kind,
            "nlist": getattr(index.faiss_index, "nlist", 0),
            "nprobe": getattr(index.faiss_index, "nprobe", 0),
            "index_bytes": (Path(directory) / "images.faiss").stat().st_size}


def delta(directory: str, rows: int, dim: int) -> dict:
    """Add 1% more items through the collection, then save: time and bytes of that save."""
    from index.store import IMAGE, FileRecord, ItemRecord
    from retriever.library.collection import Collection

    collection = Collection.open(Path(directory))
    extra = max(1, rows // 100)
    vectors = vectors_for(rows, extra, dim)
    with collection.writing():
        collection.vectors(IMAGE)
        began = time.perf_counter()
        for start in range(0, extra, BATCH):
            collection.write_files([(FileRecord(f"/bench/scale/extra/{i}.jpg", IMAGE, f"x{i}",
                                                1, 1.0), [ItemRecord(IMAGE, 0, None, v)])
                                    for i, v in enumerate(vectors[start:start + BATCH], start)])
        written = time.perf_counter() - began
        began = time.perf_counter()
        collection.save()
        saved = time.perf_counter() - began
    files = sorted(Path(directory).glob("images.faiss.delta*"))
    return {"rows": extra, "write_s": written, "save_s": saved,
            "delta_bytes": sum(p.stat().st_size for p in files), "deltas": len(files)}


def recall(directory: str, queries: int, dim: int) -> dict:
    """recall@10 of the saved index against exact search over every stored vector."""
    from bench.vector_search import clustered
    from index.ann import Neighbours, recall_at
    from index.store import IMAGE, Store
    from retriever.library.collection import Collection

    collection = Collection.open(Path(directory))
    asked = clustered(queries, dim, seed=QUERY_SEED)
    found = collection.vectors(IMAGE).search(asked, 10)[1]
    store = Store(f"sqlite:///{Path(directory) / 'store.db'}", read_only=True)
    exact = Neighbours(asked, 10)
    for ids, vectors in store.vector_batches(IMAGE):
        exact.update(ids, vectors)
    return {"recall": recall_at(exact.ids, found), "rebuilt": collection.rebuilt}


STEPS = {"ingest": lambda a: ingest(a.url, a.rows, a.dim), "build": lambda a: build(a.db),
         "delta": lambda a: delta(a.db, a.rows, a.dim),
         "recall": lambda a: recall(a.db, a.queries, a.dim)}


def step(name: str, args: argparse.Namespace, **given: object) -> dict:
    """Run one step in a child process: its result, wall seconds and peak RSS (MB)."""
    from bench.speed import run

    options = [f"--{k}={v}" for k, v in {"rows": args.rows, "dim": args.dim,
                                          "queries": args.queries, **given}.items()]
    proc = run([sys.executable, "-m", "bench.scale", "--step", name, *options])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{name}: {result}, {proc.seconds:.0f} s, {proc.peak_mb:.0f} MB", file=sys.stderr,
          flush=True)
    return {**result, "wall_s": proc.seconds, "peak_mb": proc.peak_mb}


def sqlite_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("store.db*"))


def postgres_ingest(args: argparse.Namespace) -> dict:
    """Ingest into a throw-away PostgreSQL cluster (fsync off, as tests/postgres.py makes it)."""
    from sqlalchemy import create_engine, text

    from tests.postgres import postgres_server

    with postgres_server() as server:
        url = server.create_database()
        result = step("ingest", args, url=url, rows=args.postgres_rows)
        engine = create_engine(url)
        with engine.connect() as conn:
            result["store_bytes"] = conn.scalar(text("SELECT pg_database_size(current_database())"))
        engine.dispose()
        server.drop_databases()
    return result


def served(directory: Path, args: argparse.Namespace) -> dict:
    """Warm latencies of `retriever serve` over the collection: item and text queries."""
    from bench.speed import WARM_UP, latencies, search_path, serving, summary, warm_texts

    texts = warm_texts(WARM_UP + args.queries)
    ids = [1 + (i * 7919) % args.rows for i in range(WARM_UP + args.queries)]
    began = time.perf_counter()
    with serving(directory, ["--backend", "torch"], timeout=1800) as port:
        started = time.perf_counter() - began
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        latencies(connection, [search_path(item=i) for i in ids[:WARM_UP]])
        item_ms = latencies(connection, [search_path(item=i) for i in ids[WARM_UP:]])
        latencies(connection, [search_path(text=t) for t in texts[:WARM_UP]])
        text_ms = latencies(connection, [search_path(text=t) for t in texts[WARM_UP:]])
        connection.close()
    return {"start_s": started, "item": summary(item_ms), "text": summary(text_ms)}


def on_paper(r: dict, rows: int, pg_rows: int, dim: int) -> list[str]:
    """100M images, from the measured bytes a row and the published encoder rate."""
    sqlite, built, pg = r["sqlite"], r["build"], r.get("postgres")
    pg_line = (f"; PostgreSQL {pg['store_bytes'] / pg_rows * 100_000_000 / 1e9:,.0f} GB "
               f"({pg['store_bytes'] / pg_rows:,.0f} bytes a row)" if pg else "")
    n, a100_rate = 100_000_000, 2500
    store_gb = sqlite["store_bytes"] / rows * n / 1e9
    server_gb = pg["store_bytes"] / pg_rows * n / 1e9 if pg else store_gb
    ivf_gb = built["index_bytes"] / rows * n / 1e9
    pq_gb = n * (dim // 8 + 8) / 1e9  # PQ codes (dim/8 bytes) + an int64 id a vector
    gpu_hours = n / a100_rate / 3600
    ingest_h = n / (rows / sqlite["write_s"]) / 3600
    return [
        "| 100M images | estimate | from |", "|---|---|---|",
        f"| encoding, ViT-B-32 | {gpu_hours:,.1f} A100-hours (~{gpu_hours / 8:.1f} h on 8 "
        f"A100s, or {gpu_hours / 24:.1f} h on 3 nodes of 8) | 2,500 images/s per A100 "
        "(published), decode and read kept apace by CPU workers |",
        f"| store (vectors + rows) | SQLite {store_gb:,.0f} GB{pg_line} | bytes a row measured "
        f"at {rows:,} (SQLite: {sqlite['store_bytes'] / rows:,.0f}); the vectors alone are "
        f"{dim * 4 * n / 1e9:,.0f} GB |",
        f"| writing the store, one writer | {ingest_h:,.1f} h | {rows / sqlite['write_s']:,.0f} "
        "rows/s measured (SQLite); PostgreSQL rate in the table above |",
        f"| IVF-Flat index (float32) | {ivf_gb:,.0f} GB RAM | {built['index_bytes'] / rows:,.0f}"
        " bytes a vector measured |",
        f"| IVF-PQ index (PQ{dim // 8}) | {pq_gb:,.1f} GB RAM (+ {dim * 4 * 65536 / 1e9:.2f} "
        "GB of centroids at nlist 65,536) | dim/8 code bytes + 8 id bytes a vector |",
        f"| nodes | 1 search node holds the PQ index ({pq_gb:,.1f} GB); store on one "
        f"PostgreSQL server ({server_gb:,.0f} GB); encoding spread over GPU nodes by Ray | "
        "the rows above |",
    ]


def table(r: dict, args: argparse.Namespace) -> list[str]:
    sqlite, pg, built, rec, srv, dl = (r.get(k) or {} for k in
                                       ("sqlite", "postgres", "build", "recall", "serve", "delta"))
    index_mb = built.get("index_bytes", 0) / 1e6
    rows = [
        "| step | measured | target |", "|---|---|---|",
        f"| ingest into SQLite, {args.rows:,} items | {args.rows / sqlite['write_s']:,.0f} rows/s"
        f" ({sqlite['write_s']:.0f} s), store {sqlite['store_bytes'] / 1e9:.2f} GB, peak RSS "
        f"{sqlite['peak_mb']:,.0f} MB | >= 20,000 rows/s |",
        (f"| ingest into PostgreSQL, {args.postgres_rows:,} items | "
         f"{args.postgres_rows / pg['write_s']:,.0f} rows/s ({pg['write_s']:.0f} s), database "
         f"{pg['store_bytes'] / 1e9:.2f} GB, peak RSS {pg['peak_mb']:,.0f} MB | >= 10,000 rows/s |"
         if pg else "| ingest into PostgreSQL | not measured (no PostgreSQL) | >= 10,000 rows/s |"),
        *quiet_rows(r, args),
        f"| index build, streamed from SQLite | {built['kind']} nlist {built['nlist']} nprobe "
        f"{built['nprobe']}: {built['build_s']:.0f} s, peak RSS {built['peak_mb']:,.0f} MB = "
        f"{built['peak_mb'] / index_mb:.2f}x the index file ({index_mb:,.0f} MB) | <= 2x |",
        f"| recall@10 against exact, {args.queries} fresh queries | {rec['recall']:.3f} | "
        ">= 0.95 |",
        f"| warm `retriever serve`, item query (\"more like this\") | p50 "
        f"{srv['item']['p50']:.1f} ms, p95 {srv['item']['p95']:.1f} ms | p50 <= 20 ms |",
        f"| warm `retriever serve`, text query (random ViT-B-32 text tower, torch) | p50 "
        f"{srv['text']['p50']:.1f} ms, p95 {srv['text']['p95']:.1f} ms | - |",
        f"| server start, to its first answer (the index loads on the first query) | "
        f"{srv['start_s']:.0f} s | - |",
        f"| next run: +{dl['rows']:,} items, then save | save {dl['save_s']:.1f} s writing "
        f"{dl['delta_bytes'] / 1e6:.1f} MB in {dl['deltas']} delta file (whole file: "
        f"{index_mb:,.0f} MB); peak RSS {dl['peak_mb']:,.0f} MB | saved incrementally |",
        "| Ray engine against the local engine, same folder (200 JPEGs), retriever-tiny | "
        "local 20-21 images/s; ray 6.1-6.8 starting its own Ray (-66% to -71%), 7.6-10.6 "
        "joining a running one (-47% to -64%): measured by the Ray engine's author, not by "
        "this script (README, \"When one machine is not enough\") | - |",
    ]
    return rows


NOTES = [
    "Rates are rows of `Store.write_files` over the seconds spent in it (generating the "
    "vectors is not counted). The SQLite store keeps SQLite's 4 KiB pages, in which a 2 KiB "
    "512-d vector row fills a page alone: its bytes a row are about twice the data. Item "
    "queries ask for an item's neighbours (its vector read from the store, then the FAISS "
    "search); text queries add the text tower of a random-weight ViT-B-32 on this CPU. "
    "Recall is of fresh queries from the corpus's distribution against exact search over "
    "every stored vector; nprobe was tuned by the build itself (leave-one-out, target 0.95).",
]


def quiet_rows(r: dict, args: argparse.Namespace) -> list[str]:
    """The ingest steps run again alone once the machine was quieter (`sqlite_quiet`,
    `postgres_quiet` in the kept results, with the load averages around them), if they were."""
    rows = []
    for key, name, n in (("sqlite_quiet", "SQLite", args.rows),
                         ("postgres_quiet", "PostgreSQL", args.postgres_rows)):
        if key in r:
            q = r[key]
            rows.append(f"| ingest into {name} again, alone (load {q['load'][0]:.1f} -> "
                        f"{q['load'][1]:.1f}) | {n / q['write_s']:,.0f} rows/s "
                        f"({q['write_s']:.0f} s), peak RSS {q['peak_mb']:,.0f} MB | "
                        f"{'>= 20,000' if name == 'SQLite' else '>= 10,000'} rows/s |")
    return rows


def run_all(args: argparse.Namespace, directory: Path) -> dict:
    """Every step in order; what has run is kept in WORK/results-<rows>.json as it goes."""
    from tests.postgres import Unavailable

    r: dict = {"load_before": os.getloadavg()}
    kept = WORK / f"results-{args.rows}.json"

    def keep(name: str, result: dict | None) -> None:
        r[name] = result
        kept.write_text(json.dumps(r, indent=1))

    keep("sqlite", step("ingest", args, url=f"sqlite:///{directory / 'store.db'}"))
    r["sqlite"]["store_bytes"] = sqlite_bytes(directory)
    try:
        keep("postgres", postgres_ingest(args))
    except Unavailable as why:
        print(f"no PostgreSQL: {why}", file=sys.stderr)
    keep("build", step("build", args, db=directory))
    keep("recall", step("recall", args, db=directory))
    keep("serve", served(directory, args))
    print(f"serve: {r['serve']}", file=sys.stderr, flush=True)
    keep("delta", step("delta", args, db=directory))
    keep("load_after", os.getloadavg())  # type: ignore[arg-type]
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--postgres-rows", type=int, help="default: --rows")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--section-only", action="store_true",
                        help="Rewrite the section from the kept results-<rows>.json.")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args)))
        return
    args.postgres_rows = args.postgres_rows or args.rows
    if args.section_only:
        r = json.loads((WORK / f"results-{args.rows}.json").read_text())
    else:
        directory = WORK / f"idx-{args.rows}-{args.dim}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        r = run_all(args, directory)
    before = r.get("serve_before_has_items")
    fixed = [f"Serve was measured again after `Collection.holds` stopped counting every item of "
             f"a kind on each query (`Store.has_items`): before, item queries took p50 "
             f"{before['item']['p50']:.1f} ms, text queries {before['text']['p50']:.1f} ms, "
             "70 ms of it that count."] if before else []
    if "sqlite_quiet" in r or "postgres_quiet" in r:
        fixed.append("The rows \"again, alone\" ran the same ingest step later "
                     "(`bench.scale.step(\"ingest\", ...)`, `bench.scale.postgres_ingest`) into "
                     "fresh stores, once the other engineers' test runs had quietened.")
    body = "\n".join([*table(r, args), "", *NOTES, *fixed, "", *on_paper(r, args.rows,
                                                                   args.postgres_rows,
                                                                   args.dim)])
    command = (f"python -m bench.scale --rows {args.rows} --dim {args.dim} --postgres-rows "
               f"{args.postgres_rows} --queries {args.queries}")
    loads = f"load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after"
    write_section("scale", f"Scale: {args.rows:,} items (CPU)", body, command,
                  f"{machine_line()}; {loads} (the machine is shared with other test runs)")


if __name__ == "__main__":
    main()
