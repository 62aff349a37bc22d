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
from collections.abc import Callable
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
    from index.kinds import IMAGE
    from index.records import FileRecord, ItemRecord, ModelRecord
    from index.store import Store

    load = os.getloadavg()[0]
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
    return {"rows": rows, "write_s": writing, "load": [load, os.getloadavg()[0]]}


def build(directory: str) -> dict:
    """Save a collection whose index is missing: rebuilt from the store by streaming."""
    from index.ann import AnnConfig
    from index.kinds import IMAGE
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
    from index.kinds import IMAGE
    from index.records import FileRecord, ItemRecord
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
    from index.ann import recall_at
    from index.kinds import IMAGE
    from retriever.library.collection import Collection

    collection = Collection.open(Path(directory))
    asked = clustered(queries, dim, seed=QUERY_SEED)
    found = collection.vectors(IMAGE).search(asked, 10)[1]
    return {"recall": recall_at(exact_ids(directory, asked), found),
            "rebuilt": collection.rebuilt}


def exact_ids(directory: str, asked):
    """(q, 10) ids of the exact neighbours of `asked` (q, dim), streamed over the store."""
    from index.ann import Neighbours
    from index.kinds import IMAGE
    from index.store import Store

    store = Store(f"sqlite:///{Path(directory) / 'store.db'}", read_only=True)
    exact = Neighbours(asked, 10)
    for ids, vectors in store.vector_batches(IMAGE):
        exact.update(ids, vectors)
    store.close()
    return exact.ids


# --- an IVF searched from disk (index.ondisk) against loaded in memory: --on-disk ----------

ON_DISK_KINDS = ("ivf", "ivfpq")
SEARCHED = {"no": "in memory", "yes": "on disk"}  # AnnConfig.on_disk -> how it is searched


def remake(directory: str, kind: str, rows: int, dim: int) -> dict:
    """The saved index rebuilt from the store as `kind`, then a run that adds 1% more items
    and removes 0.5%, saved as a delta: what a reader then finds."""
    from index.ann import AnnConfig
    from index.kinds import IMAGE
    from index.records import FileRecord, ItemRecord
    from retriever.library.collection import Collection

    folder, ann, n = Path(directory), AnnConfig(kind), ON_DISK_KINDS.index(kind)
    for old in folder.glob("images.faiss*"):
        old.unlink()
    collection = Collection.open(folder, ann)
    began = time.perf_counter()
    with collection.writing():
        collection.save()
    built = time.perf_counter() - began
    extra, gone = max(1, rows // 100), max(1, rows // 200)
    vectors = vectors_for(rows + n * extra, extra, dim)
    with collection.writing():
        for start in range(0, extra, BATCH):
            collection.write_files([(FileRecord(f"/bench/scale/{kind}/{i}.jpg", IMAGE,
                                                f"{kind}{i}", 1, 1.0),
                                     [ItemRecord(IMAGE, 0, None, v)])
                                    for i, v in enumerate(vectors[start:start + BATCH], start)])
        collection.remove_files([f"/bench/scale/{i // 1000:04d}/{i:07d}.jpg"
                                 for i in range(n * gone, (n + 1) * gone)])
        collection.save()
    index = collection.vectors(IMAGE)
    return {"build_s": built, "kind": index.kind, "count": len(index),
            "nlist": getattr(index.faiss_index, "nlist", 0),
            "nprobe": getattr(index.faiss_index, "nprobe", 0), "added": extra, "removed": gone,
            "index_bytes": (folder / "images.faiss").stat().st_size,
            "delta_bytes": sum(p.stat().st_size for p in folder.glob("images.faiss.delta*"))}


def truth(directory: str, queries: int, dim: int) -> dict:
    """Exact neighbours of the bench's queries, kept in <directory>/truth.npy (q, 10)."""
    import numpy as np

    from bench.vector_search import clustered

    asked = clustered(queries, dim, seed=QUERY_SEED)
    np.save(Path(directory) / "truth.npy", exact_ids(directory, asked))
    return {"queries": queries}


def searching(directory: str, mode: str, queries: int, dim: int) -> dict:
    """One reader (`AnnConfig.on_disk` = `mode`): open the saved index, drop its files from the
    page cache, then ask the queries one at a time twice: cold (each query's lists read from
    disk when mapped), then warm. Its ids (q, 10) go to <directory>/found-<mode>.npy."""
    import numpy as np

    from bench.speed import summary
    from bench.vector_search import clustered
    from index.ann import AnnConfig, recall_at
    from index.kinds import IMAGE
    from retriever.library.collection import Collection

    asked = clustered(queries, dim, seed=QUERY_SEED)
    import index.ondisk  # noqa: F401 (FAISS imported, and the store opened once: their
    Collection.open(Path(directory)).close()  # files are not the index's bytes read at open)
    evict(Path(directory))  # both readers load from the disk
    began, read_before = time.perf_counter(), read_bytes()
    searcher = Collection.open(Path(directory), AnnConfig(on_disk=mode)).searcher(IMAGE)
    loaded, read = time.perf_counter() - began, read_bytes() - read_before
    cached = resident(Path(directory))  # the files' pages the open brought in, mapped too
    evict(Path(directory))  # the first queries read the disk
    passes = []
    for _ in range(2):
        ms = []
        for query in asked:
            began = time.perf_counter()
            searcher.search(query[None], 10)
            ms.append((time.perf_counter() - began) * 1000)
        passes.append(ms)
    found = searcher.search(asked, 10)[1]
    np.save(Path(directory) / f"found-{mode}.npy", found)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kb = {k: int(status[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")}
    return {"searcher": type(searcher).__name__, "load_s": loaded, "first_ms": passes[0][0],
            "open_read_mb": read / 1e6, "open_cached_mb": cached / 1e6,
            "cold": summary(passes[0]), "warm": summary(passes[1]), "anon_mb": kb["RssAnon"],
            "file_mb": kb["RssFile"],
            "recall": recall_at(np.load(Path(directory) / "truth.npy"), found)}


def read_bytes() -> int:
    """Bytes this process has read (any read(), from the page cache or the disk): rchar."""
    io = Path("/proc/self/io").read_text().splitlines()
    return int(next(line.split()[1] for line in io if line.startswith("rchar:")))


def resident(directory: Path) -> int:
    """Bytes of the index files' pages now in the page cache (fincore, util-linux): read by
    read() or by touching a mapping, readahead included."""
    import subprocess

    paths = [str(p) for p in directory.glob("images.faiss*")]
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *paths],
                          capture_output=True, text=True, check=True)
    return sum(int(field) for field in done.stdout.split())


def evict(directory: Path) -> None:
    """Drop the index files' pages from the page cache (those no process has mapped)."""
    for path in directory.glob("images.faiss*"):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
        os.close(fd)


def on_disk_runs(args: argparse.Namespace, directory: Path) -> dict:
    """Ingest, exact neighbours, then for each IVF kind: build + delta, and a reader of each
    kind; what has run is kept in WORK/ondisk-<rows>.json as it goes."""
    import numpy as np

    r: dict = {"load_before": os.getloadavg()}
    kept = WORK / f"ondisk-{args.rows}.json"
    r["ingest"] = step("ingest", args, url=f"sqlite:///{directory / 'store.db'}")
    r["truth"] = step("truth", args, db=directory)
    for kind in ON_DISK_KINDS:
        r[kind] = {"built": step("remake", args, db=directory, kind=kind)}
        for mode in SEARCHED:
            r[kind][mode] = step("searching", args, db=directory, mode=mode)
        found = [np.load(directory / f"found-{mode}.npy") for mode in SEARCHED]
        r[kind]["same_ids"] = float(np.mean(found[0] == found[1]))
        kept.write_text(json.dumps(r, indent=1))
    r["load_after"] = os.getloadavg()
    kept.write_text(json.dumps(r, indent=1))
    return r


def on_disk_table(r: dict, args: argparse.Namespace) -> list[str]:
    rows = ["| index | searched | load | read at open: read() / pages cached | peak RSS | at "
            "the end: private + file pages | first query, cold | p50 / p95 cold | p50 / p95 "
            "warm | recall@10 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind in ON_DISK_KINDS:
        b = r[kind]["built"]
        name = (f"{b['kind']} nlist {b['nlist']} nprobe {b['nprobe']}: "
                f"{b['index_bytes'] / 1e6:,.0f} MB + {b['delta_bytes'] / 1e6:,.1f} MB delta")
        for mode, how in SEARCHED.items():
            m = r[kind][mode]
            opened = (f"{m['open_read_mb']:,.1f} / {m['open_cached_mb']:,.1f} MB"
                      if "open_read_mb" in m else "not measured")
            rows.append(f"| {name} | {how} ({m['searcher']}) | {m['load_s']:.1f} s | {opened} | "
                        f"{m['peak_mb']:,.0f} MB | {m['anon_mb']:,.0f} + {m['file_mb']:,.0f} "
                        f"MB | {m['first_ms']:.1f} ms | {m['cold']['p50']:.2f} / "
                        f"{m['cold']['p95']:.2f} ms | {m['warm']['p50']:.2f} / "
                        f"{m['warm']['p95']:.2f} ms | {m['recall']:.3f} |")
    return rows


def measured(args: argparse.Namespace, saved: str, folder: str,
             run: Callable[[argparse.Namespace, Path], dict]) -> dict:
    """With --section-only, the results `run` saved in WORK/`saved`; else `run` them afresh in
    an emptied WORK/`folder`."""
    if args.section_only:
        return json.loads((WORK / saved).read_text())
    directory = WORK / folder
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return run(args, directory)


def on_disk_section(args: argparse.Namespace) -> None:
    """Run (or with --section-only, reread) the on-disk measurements; write their section."""
    r = measured(args, f"ondisk-{args.rows}.json", f"ondisk-{args.rows}-{args.dim}",
                 on_disk_runs)
    b = r["ivf"]["built"]
    same = ", ".join(f"{kind} {r[kind]['same_ids']:.0%}" for kind in ON_DISK_KINDS)
    notes = [
        "", f"Each index holds {args.rows:,} clustered vectors saved whole, then a run that "
        f"added {b['added']:,} and removed {b['removed']:,} saved as a delta; each row is one "
        f"reader process (`Collection.searcher`, `AnnConfig.on_disk` no / yes) that loads it "
        "from the disk (its files dropped from the page cache first, posix_fadvise "
        "DONTNEED), drops them again, then asks the queries one at a time: a first pass (cold: "
        "on disk, each query's lists are read from the disk) and a second (warm). \"Read at "
        "open\": bytes the process read() while opening (/proc/self/io rchar: the store's "
        "pages, the saved files' checksummed heads, FAISS's own reads; a file whose stat still "
        "matches its writer's stamp is checked by its head alone, index.checksums), and the "
        "index files' pages in the page cache right after (fincore: mapped pages touched and "
        "readahead too); on disk that is the IVF file's head three times (checked, then parsed "
        "for the mapped index and for its empty in-memory twin that takes the deltas: nlist x "
        "dim x 4 bytes of centroids each), the delta file loaded whole, and the store's pages. "
        "Before the stamps (an index saved by an older writer, or copied and not yet stamped "
        "again by `retriever check`) every file was read whole for its checksum first: at "
        "least the file's size more (tests/test_open_cost.py). Peak RSS is the process's "
        "(os.wait4), file pages "
        "included; \"private\" is RssAnon at the end, \"file pages\" RssFile: the shared "
        "libraries (about 100 MB) and the mapped index pages then resident, which the kernel "
        "drops under memory pressure. Ids equal to the in-memory reader's, query by query: "
        f"{same}.",
    ]
    command = (f"python -m bench.scale --on-disk --rows {args.rows} --dim {args.dim} "
               f"--queries {args.queries}")
    loads = f"load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after"
    name = "scale-ondisk" if args.rows == 1_000_000 else f"scale-ondisk-{args.rows}"
    write_section(name, f"Scale: an IVF searched from disk, {args.rows:,} items (CPU)",
                  "\n".join([*on_disk_table(r, args), *notes]), command,
                  f"{machine_line()}; {loads} (the machine is shared with other test runs)")


# --- keyword search at scale (--keywords) ----------------------------------------------------

KEYWORD_MODEL = ("retriever-tiny", "none", 64)  # a fast text tower: the server encodes queries
PASSAGES_A_FILE = 10
WORDS_A_PASSAGE = 30
VOCABULARY = 100_000  # made-up words, drawn by Zipf's law (s = 1.2): the commonest is in
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # nearly every passage
KEYWORD_CLASSES = ("a file number", "a rare word", "two words of a passage",
                   "a common word and a rare one", "a common word")


def made_word(rank: int) -> str:
    """The made-up word of this frequency rank: its digits in base 70, as syllables."""
    word = ""
    while True:
        rank, digit = divmod(rank, len(SYLLABLES))
        word += SYLLABLES[digit]
        if rank == 0:
            return word


def passage_ranks(start: int, count: int):
    """(count, WORDS_A_PASSAGE) word ranks of passages start..start+count (one batch)."""
    import numpy as np

    ranks = np.random.default_rng(start).zipf(1.2, (count, WORDS_A_PASSAGE)) - 1
    return ranks % VOCABULARY


def keyword_store(url: str, rows: int) -> dict:
    """Write `rows` text passages, PASSAGES_A_FILE a file named report-INV-<number>.txt, with
    random vectors, in transactions of BATCH passages; seconds in writes."""
    import numpy as np

    from index.kinds import TEXT
    from index.records import FileRecord, ItemRecord, ModelRecord
    from index.store import Store

    load = os.getloadavg()[0]
    store = Store(url)
    store.set_model(ModelRecord(*KEYWORD_MODEL))
    writing = 0.0
    for start in range(0, rows, BATCH):
        ranks = passage_ranks(start, min(BATCH, rows - start))
        vectors = np.random.default_rng(start).normal(size=(len(ranks), KEYWORD_MODEL[2]))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        batch = []
        for first in range(0, len(ranks), PASSAGES_A_FILE):
            number = (start + first) // PASSAGES_A_FILE
            batch.append((FileRecord(f"/bench/keywords/{number // 1000:03d}/report-INV-"
                                     f"{number:06d}.txt", TEXT, f"k{number}", 1, 1.0),
                          [ItemRecord(TEXT, n, " ".join(made_word(r) for r in ranks[first + n]),
                                      vectors[first + n].astype(np.float32))
                           for n in range(min(PASSAGES_A_FILE, len(ranks) - first))]))
        began = time.perf_counter()
        store.write_files(batch)
        writing += time.perf_counter() - began
    store.close()
    return {"rows": rows, "write_s": writing, "load": [load, os.getloadavg()[0]]}


def keyword_queries(rows: int, count: int) -> dict[str, list[str]]:
    """`count` queries of each class (KEYWORD_CLASSES), drawn from what the store holds."""
    import numpy as np

    rng = np.random.default_rng(QUERY_SEED)
    files = rng.integers(0, rows // PASSAGES_A_FILE, count)
    passages = [passage_ranks(start, min(BATCH, rows - start))[rng.integers(0, min(
        BATCH, rows - start))] for start in rng.integers(0, rows // BATCH, count) * BATCH]
    pairs = [rng.choice(ranks[ranks >= 100], 2, replace=False) if (ranks >= 100).sum() > 1
             else ranks[:2] for ranks in passages]
    return {KEYWORD_CLASSES[0]: [f"INV-{f:06d}" for f in files],
            KEYWORD_CLASSES[1]: [made_word(r) for r in rng.integers(10_000, VOCABULARY, count)],
            KEYWORD_CLASSES[2]: [" ".join(made_word(r) for r in pair) for pair in pairs],
            KEYWORD_CLASSES[3]: [f"{made_word(ranks.min())} {made_word(ranks.max())}"
                                 for ranks in passages],
            KEYWORD_CLASSES[4]: [made_word(r) for r in rng.integers(0, 10, count)]}


def keyword_direct(url: str, rows: int, queries: int) -> dict:
    """`Store.keyword_hits` in this process, as the search asks it (50 texts): p50/p95 a
    class, after one warm-up pass, and the hits each class found on average."""
    from bench.speed import summary
    from index.kinds import TEXT
    from index.store import Store

    store = Store(url, read_only=True)
    out = {}
    for name, asked in keyword_queries(rows, queries).items():
        found = [len(store.keyword_hits(words, [TEXT], 50)) for words in asked]  # warm-up
        ms = []
        for words in asked:
            began = time.perf_counter()
            store.keyword_hits(words, [TEXT], 50)
            ms.append((time.perf_counter() - began) * 1000)
        out[name] = {**summary(ms), "hits": sum(found) / len(found)}
    store.close()
    return out


def keyword_served(directory: Path, args: argparse.Namespace) -> dict:
    """Warm `retriever serve` latencies of /api/search?match=keyword a class of query."""
    from urllib.parse import urlencode

    from bench.speed import fetch, serving, summary

    out = {}
    with serving(directory, ["--backend", "torch"], timeout=1800) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for name, asked in keyword_queries(args.rows, args.queries).items():
            paths = ["/api/search?" + urlencode({"text": words, "match": "keyword",
                                                 "target": "texts", "k": 10})
                     for words in asked]
            for path in paths:  # warm-up
                fetch(connection, path)
            ms = []
            for path in paths:
                began = time.perf_counter()
                fetch(connection, path)
                ms.append((time.perf_counter() - began) * 1000)
            out[name] = summary(ms)
        connection.close()
    return out


def keyword_runs(args: argparse.Namespace, directory: Path) -> dict:
    """Build the passages' store, then query it in-process and through the server; what has
    run is kept in WORK/keywords-<rows>.json as it goes."""
    r: dict = {"load_before": os.getloadavg()}
    kept = WORK / f"keywords-{args.rows}.json"
    r["ingest"] = step("keywords", args, url=f"sqlite:///{directory / 'store.db'}")
    r["ingest"]["store_bytes"] = sqlite_bytes(directory)
    kept.write_text(json.dumps(r, indent=1))
    r["direct"] = step("keyword_direct", args, url=f"sqlite:///{directory / 'store.db'}")
    kept.write_text(json.dumps(r, indent=1))
    r["served"] = keyword_served(directory, args)
    r["load_after"] = os.getloadavg()
    kept.write_text(json.dumps(r, indent=1))
    return r


def keyword_section(args: argparse.Namespace) -> None:
    """Run (or with --section-only, reread) the keyword measurements; write their section."""
    r = measured(args, f"keywords-{args.rows}.json", f"keywords-{args.rows}", keyword_runs)
    ing = r["ingest"]
    rows = ["| query (each class: its own queries) | hits found (at most 50) | in-process "
            "`Store.keyword_hits` p50 / p95 | `retriever serve` /api/search?match=keyword "
            "p50 / p95 | target |", "|---|---|---|---|---|"]
    for name in KEYWORD_CLASSES:
        d, s = r["direct"][name], r.get("served", {}).get(name)
        served = f"{s['p50']:.1f} / {s['p95']:.1f} ms" if s else "not measured"
        rows.append(f"| {name} | {d['hits']:.1f} | {d['p50']:.1f} / {d['p95']:.1f} ms | "
                    f"{served} | p50 <= 20 ms |")
    notes = [
        "", f"The store: {args.rows:,} text passages of {WORDS_A_PASSAGE} made-up words drawn "
        f"by Zipf's law (s = 1.2, {VOCABULARY:,} words: the commonest is in nearly every "
        f"passage), {PASSAGES_A_FILE} a file named report-INV-<number>.txt, with random 64-d "
        f"vectors (retriever-tiny, whose text tower the server runs on each query), written "
        f"by `Store.write_files` at {args.rows / ing['write_s']:,.0f} passages/s with their "
        f"keyword rows (FTS5); store {ing['store_bytes'] / 1e9:.2f} GB. {args.queries} "
        "queries a class, asked once to warm up, then timed. A file number matches its "
        "file's 10 passages; two words of a passage are of rank 100 or more, a common and a "
        "rare one its commonest and rarest; a common word (rank < 10) matches most passages: "
        "bm25 counts them all before ranking the newest 2,000 (index/keywords.py). "
        "Through the server, the text tower encoding each query comes first (the cosines "
        "that keyword results show), then the results' rows and snippets.",
    ]
    command = f"python -m bench.scale --keywords --rows {args.rows} --queries {args.queries}"
    loads = f"load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after"
    write_section("scale-keywords", f"Scale: keyword search, {args.rows:,} passages (CPU)",
                  "\n".join([*rows, *notes]), command,
                  f"{machine_line()}; {loads} (the machine is shared with other test runs)")


STEPS = {"ingest": lambda a: ingest(a.url, a.rows, a.dim), "build": lambda a: build(a.db),
         "delta": lambda a: delta(a.db, a.rows, a.dim),
         "recall": lambda a: recall(a.db, a.queries, a.dim),
         "truth": lambda a: truth(a.db, a.queries, a.dim),
         "remake": lambda a: remake(a.db, a.kind, a.rows, a.dim),
         "searching": lambda a: searching(a.db, a.mode, a.queries, a.dim),
         "keywords": lambda a: keyword_store(a.url, a.rows),
         "keyword_direct": lambda a: keyword_direct(a.url, a.rows, a.queries)}


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
        f"| ingest into SQLite, {args.rows:,} items{loaded(sqlite)} | "
        f"{args.rows / sqlite['write_s']:,.0f} rows/s"
        f" ({sqlite['write_s']:.0f} s), store {sqlite['store_bytes'] / 1e9:.2f} GB, peak RSS "
        f"{sqlite['peak_mb']:,.0f} MB | >= 20,000 rows/s |",
        (f"| ingest into PostgreSQL, {args.postgres_rows:,} items{loaded(pg)} | "
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
        f"| keyword query, {args.rows:,} passages, p50/p95 through `retriever serve` | "
        f"`python -m bench.scale --keywords --rows {args.rows}` (section \"Scale: keyword "
        "search\" below) | p50 <= 20 ms |",
        "| Ray engine against the local engine, same folder, retriever-tiny | "
        "`python -m bench.engines` (section \"Ray engine against the local engine, one "
        "machine\" below): within 20% from about 1,000 photos joining a running Ray, 3,000 "
        "starting its own | within 20% |",
    ]
    return rows


def loaded(result: dict) -> str:
    """The load average around an ingest step, where it was kept: the machine is shared."""
    return f" (load {result['load'][0]:.1f} -> {result['load'][1]:.1f})" if "load" in result else ""


NOTES = [
    "Rates are rows of `Store.write_files` over the seconds spent in it (generating the "
    "vectors is not counted). A new SQLite store has 32 KiB pages, 15 rows of 2 KiB 512-d "
    "vectors each (SQLite's default 4 KiB pages held one, in an overflow page of its own: "
    "twice the bytes); PostgreSQL takes the rows by binary COPY. Item "
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
    parser.add_argument("--on-disk", action="store_true",
                        help="Measure an IVF searched from disk against in memory instead.")
    parser.add_argument("--keywords", action="store_true",
                        help="Measure keyword search over --rows text passages instead.")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args)))
        return
    if args.on_disk:
        on_disk_section(args)
        return
    if args.keywords:
        keyword_section(args)
        return
    args.postgres_rows = args.postgres_rows or args.rows
    r = measured(args, f"results-{args.rows}.json", f"idx-{args.rows}-{args.dim}", run_all)
    before = r.get("serve_before_has_items")
    fixed = [f"Serve was measured again after `Collection.holds` stopped counting every item of "
             f"a kind on each query (`Store.has_items`): before, item queries took p50 "
             f"{before['item']['p50']:.1f} ms, text queries {before['text']['p50']:.1f} ms, "
             "70 ms of it that count."] if before else []
    if "ingest_before" in r:
        was = r["ingest_before"]
        fixed.append(f"The ingest rows were measured again (`bench.scale.step(\"ingest\", ...)`,"
                     f" `bench.scale.postgres_ingest`, fresh stores) once `Store.write_files` "
                     f"wrote by executemany (SQLite, 32 KiB pages) and binary COPY (PostgreSQL)"
                     f" with ids from the database's counters; before, the same steps took "
                     f"{was['sqlite']:,.0f} and {was['postgres']:,.0f} rows/s on a quiet "
                     f"machine (4 KiB pages, INSERTs and ids read back). The other rows are "
                     f"those of the whole run, its SQLite store made with 4 KiB pages.")
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
