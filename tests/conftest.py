"""Shared fixtures. Nothing here touches the network: models are tiny open_clip architectures
from a registered config, with random (seeded) or test-trained weights."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retriever.encoding.architectures import register_bundled_configs
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.models import load_model

from .helpers import COLOURS, TINY, write_photo

register_bundled_configs()  # tests ask open_clip about retriever-tiny by name, as load_model does


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    """No test reads the user's caches, index or environment."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    # the index registry and the ONNX export cache (retriever.userdirs)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.delenv("RETRIEVER_DB", raising=False)
    monkeypatch.delenv("RETRIEVER_STORE_URL", raising=False)
    # torch unless a test asks for ONNX: an export costs each new index seconds (tests/test_onnx
    # runs the default, auto = ONNX on CPU, end to end)
    monkeypatch.setenv("RETRIEVER_BACKEND", "torch")
    logging.getLogger().setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Training tests on one thread: retriever-tiny runs as fast on one as on two, one thread
    does not collapse (10x slower, measured) when another process competes for the 2 cores,
    and a fixed thread count sums in a fixed order (runs compare bit for bit)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_encoder() -> ClipEncoder:
    return ClipEncoder(load_model(TINY))


@pytest.fixture
def media_folder(tmp_path) -> Path:
    """Three photos (one with a sidecar caption), two documents, one corrupt image."""
    root = tmp_path / "media"
    for name, colour in COLOURS.items():
        write_photo(root / "photos" / f"{name}.jpg", colour)
    (root / "photos" / "red.txt").write_text("a red disc on grey\n")
    (root / "notes").mkdir()
    (root / "notes" / "trip.md").write_text(
        "# Trip\n\nWe saw a green field.\n\n" + "The sky was blue all day long. " * 12
    )
    (root / "notes" / "todo.txt").write_text("buy red paint")
    (root / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


@pytest.fixture
def cli():
    """Run the real CLI in-process: cli(args...) -> click Result (stdout, stderr, exit_code)."""
    from cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run


@pytest.fixture(scope="session")
def shapes_checkpoint(tmp_path_factory) -> Path:
    """retriever-tiny trained on the generated shape scenes with `retriever demo`'s recipe
    (~15 s on one thread), saved as a checkpoint: a model whose space means something here
    (colour, shape, place), shared by the tests that need one."""
    import torch

    from retriever.demo import DEMO_IMAGES, demo_config
    from retriever.training.loop import train
    from retriever.training.synthetic import write_captioned_images

    folder = tmp_path_factory.mktemp("shapes")
    write_captioned_images(folder / "scenes", DEMO_IMAGES, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(demo_config(folder / "scenes", folder / "shapes.pt"), log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return folder / "shapes.pt"


@pytest.fixture(scope="session")
def postgres():
    """The PostgreSQL server of the PostgreSQL variants (tests/postgres.py), or a skip saying
    why there is none; with $RETRIEVER_TEST_POSTGRES_REQUIRED set (CI), a failure instead."""
    from .postgres import Unavailable, postgres_server

    with ExitStack() as stack:
        try:
            server = stack.enter_context(postgres_server())
        except Unavailable as why:
            if os.environ.get("RETRIEVER_TEST_POSTGRES_REQUIRED"):
                pytest.fail(f"PostgreSQL is required here: {why}")
            pytest.skip(f"no PostgreSQL: {why}")
        yield server


@pytest.hookimpl(tryfirst=True)  # before -m deselects: pytest's own hook runs after this one
def pytest_collection_modifyitems(items):
    """Every test that takes the `postgres` server, itself or through a fixture, is marked
    `postgres` (the PostgreSQL variant of `stores` asks for it at run time: marked below)."""
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stores(request, tmp_path):
    """Store URLs on SQLite, then on PostgreSQL: a test taking this runs on both (the second
    marked `postgres`)."""
    from .postgres import Stores

    server = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    yield Stores(server, tmp_path)
    if server is not None:
        server.drop_databases()


@pytest.fixture
def store_env(stores, monkeypatch):
    """`stores`, with every collection the test opens on its backend: on PostgreSQL, one
    database whatever the index folder; on SQLite, the folder's. The CLI (in this process
    and in the ones a test starts) reads it from $RETRIEVER_STORE_URL; a collection the test
    opens itself is given it as the CLI would give it (`store_url`): the library reads no
    environment variable."""
    if stores.server is not None:
        from retriever.library.collection import Collection

        url, opened = stores.url("index"), Collection.open
        monkeypatch.setenv("RETRIEVER_STORE_URL", url)

        def on_postgres(directory, ann=None, store_url=None, *args, **kwargs):
            return opened(directory, ann, store_url or url, *args, **kwargs)

        monkeypatch.setattr(Collection, "open", staticmethod(on_postgres))
    return stores
