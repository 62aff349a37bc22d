"""`--engine ray` beyond one node: a cluster of three nodes simulated on this machine (Ray's
`ray.cluster_utils.Cluster`: a head and two workers, one CPU each, all on 127.0.0.1), and one
worker node removed mid-run, with blocks being read and encoded on it. Nothing is lost (every
file stored, or the failure it is on one node), nothing is stored twice (the collection is the
local engine's), and the run ends. Select it alone with `pytest tests/test_ray_cluster.py`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import assert_same, file_states, index, with_reader_hook, write_photo

READ_PAUSE = 0.3  # seconds each read waits: 45 files on two reading CPUs, about 7 s
NODE = {"num_cpus": 1, "object_store_memory": 96 * 2**20}  # the store's floor is 75 MiB
pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray's own


@pytest.fixture
def cluster() -> Iterator[tuple[object, list[object]]]:
    """The cluster, this process its driver; and its two worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    from retriever.ingest.ray_engine import WORKER_NICENESS, _loopback

    with _loopback():
        made = Cluster(initialize_head=True, head_node_args={
            **NODE, "include_dashboard": False,
            "_system_config": {"worker_niceness": WORKER_NICENESS}})
        try:
            workers = [made.add_node(**NODE) for _ in range(2)]
            made.wait_for_nodes()
            made.connect()
        except BaseException:
            made.shutdown()
            raise
    try:
        yield made, workers
    finally:
        ray.shutdown()
        made.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Photos, notes, and one broken image: six blocks of 8 (`index`'s batch size)."""
    root = tmp_path_factory.mktemp("cluster-media")
    for i in range(40):
        write_photo(root / f"p{i:03d}.jpg", (i * 37 % 256, i * 91 % 256, i * 53 % 256))
    for i in range(4):
        (root / f"n{i}.md").write_text(f"note {i}\n\n" + "words about photos " * (10 * i + 1))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


class AfterFirstBlock:
    """A `Progress` that calls `act` once the run has stored its first block, and counts the
    files stored after that."""

    def __init__(self, act: Callable[[], None]) -> None:
        self._act, self.before, self.after = act, 0, 0

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[AfterFirstBlock]:
        yield self

    def advance(self, n: int = 1) -> None:
        if self.before:
            self.after += n
            return
        self.before = n
        self._act()


def test_a_node_removed_mid_run_loses_nothing_and_stores_nothing_twice(cluster, media,
                                                                        tmp_path, monkeypatch):
    """Each read takes a little while (READ_PAUSE), so that when the first block is stored
    the nodes are still reading the rest: the node removed takes reads or the encoder with it."""
    import time

    import ray

    with_reader_hook(monkeypatch, lambda media: time.sleep(READ_PAUSE))
    made, workers = cluster
    assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"] * 3
    removal = AfterFirstBlock(lambda: made.remove_node(workers[0]))
    local = index(media, tmp_path / "local", "local")
    ray_run = index(media, tmp_path / "ray", "ray", progress=removal)
    assert removal.before and removal.after, "the node left while files remained"
    assert sum(node["Alive"] for node in ray.nodes()) == 2
    assert ray_run.counts == local.counts  # files and items: nothing twice, nothing lost
    assert ray_run.report.failures == local.report.failures  # broken.jpg alone
    assert file_states(tmp_path / "ray").keys() == file_states(tmp_path / "local").keys()
    assert_same(tmp_path / "ray", tmp_path / "local")
