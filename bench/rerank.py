"""IVF-PQ with and without exact re-ranking (index.rerank): recall@10 and latency per query.

    python -m bench.rerank --rows 100000 --dim 512 [--queries 200] [--factors 2,5,10,20]

Items are bench/vector_search.py's clustered unit vectors written through `Store.write_files`
into a throw-away collection saved as IVF-PQ (nprobe tuned as `retriever index` tunes it);
queries are clustered vectors of another seed, as bench/scale.py asks them. Recall is against
exact search over the same vectors; latency is one query at a time, warm, in this process,
from the index loaded in memory: codes alone (`searcher().search`) against re-ranked
(`Collection.nearest`) for each RERANK_FACTOR in --factors, whose extra cost is the store read
of k x RERANK_FACTOR vectors and their exact scores. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.vector_search import clustered
from index import rerank
from index.ann import AnnConfig, recall_at
from index.kinds import IMAGE
from index.records import FileRecord, ItemRecord, ModelRecord
from retriever.library.collection import Collection

QUERY_SEED, BATCH, K = 2, 10_000, 10


def saved(folder: Path, vectors: np.ndarray) -> None:
    collection = Collection.open(folder, AnnConfig("ivfpq", on_disk="no"))
    collection.bind_model(ModelRecord("bench", "none", vectors.shape[1]))
    with collection.writing():
        for start in range(0, len(vectors), BATCH):
            collection.write_files([
                (FileRecord(f"/bench/{i}.jpg", IMAGE, f"h{i}", 1, 1.0),
                 [ItemRecord(IMAGE, 0, None, vectors[i])])
                for i in range(start, min(start + BATCH, len(vectors)))])
        collection.save()
    collection.close()


def per_query_ms(search, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Each query searched alone: ids (q, K) and the median milliseconds a query."""
    search(queries[:1])  # warm-up
    found, took = [], []
    for q in queries:
        began = time.perf_counter()
        found.append(search(q[None])[1][0])
        took.append(time.perf_counter() - began)
    return np.array(found), 1000 * float(np.median(took))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--factors", default="10", help="RERANK_FACTORs to try, e.g. 2,5,10")
    args = parser.parse_args()
    vectors = clustered(args.rows, args.dim, seed=1)
    queries = clustered(args.queries, args.dim, seed=QUERY_SEED)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :K] + 1  # item ids count from 1
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        saved(Path(tmp), vectors)
        build_s = time.perf_counter() - began
        reader = Collection.open(Path(tmp), AnnConfig(on_disk="no"))
        index = reader.searcher(IMAGE)
        codes, codes_ms = per_query_ms(lambda q: index.search(q, K), queries)
        reranked = {}
        for factor in [int(f) for f in args.factors.split(",")]:
            rerank.RERANK_FACTOR = factor
            exact, exact_ms = per_query_ms(lambda q: reader.nearest(IMAGE, q, K), queries)
            reranked[factor] = {"recall": recall_at(truth, exact), "ms": round(exact_ms, 3)}
        nprobe = int(index.faiss_index.nprobe)  # type: ignore[union-attr]
        reader.close()
    print(json.dumps({
        "rows": args.rows, "dim": args.dim, "queries": args.queries, "nprobe": nprobe,
        "recall_codes": recall_at(truth, codes), "ms_codes": round(codes_ms, 3),
        "reranked_by_factor": reranked, "build_s": round(build_s, 1),
        "load": [load, os.getloadavg()[0]]}))


if __name__ == "__main__":
    main()
