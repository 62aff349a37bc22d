"""Hostile checkpoints and model configs: a checkpoint's `arch` never names a file outside
retriever's own temporary folder, a config asking for a huge model is refused before it is
built, and every checkpoint that cannot be loaded is one line, through `index`, `search`, `eval`
and `train` alike, writing nothing anywhere."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP
from safetensors.torch import save_file

from retriever.encoding.checkpoints import save_checkpoint
from retriever.encoding.models import ModelSpec, load_model

from .helpers import TINY, write_photo


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    """A sound retriever checkpoint of retriever-tiny, as torch.load gives it back."""
    path = tmp_path_factory.mktemp("good") / "good.pt"
    save_checkpoint(path, load_model(TINY, note=lambda _: None))
    return torch.load(path, weights_only=True)


def _big_cfg(good: dict) -> dict:
    # ~6e12 parameters in the token table: torch fails to allocate it at once, so code that
    # builds before checking fails fast too, instead of eating the machine's memory
    cfg = json.loads(json.dumps(good["model_cfg"]))
    cfg["text_cfg"]["vocab_size"] = 10**11
    return cfg


def _shrunk(good: dict) -> dict:
    return {k: v[..., :1] if v.ndim else v for k, v in good["state_dict"].items()}


def _torch_file(change: Callable[[dict, Path], object], suffix: str = ".pt"):
    def write(good: dict, folder: Path) -> Path:
        path = folder / f"hostile{suffix}"
        torch.save(change(good, folder), path)
        return path
    return write


def _cut(fraction: float, suffix: str):
    def write(good: dict, folder: Path) -> Path:
        path = folder / f"whole{suffix}"
        if suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in good["state_dict"].items()}, path)
        else:
            torch.save(good, path)
        data = path.read_bytes()
        path.unlink()
        cut = folder / f"cut{suffix}"
        cut.write_bytes(data[: int(len(data) * fraction)])
        return cut
    return write


def _bytes(data: bytes, suffix: str):
    def write(good: dict, folder: Path) -> Path:
        path = folder / f"junk{suffix}"
        path.write_bytes(data)
        return path
    return write


# name -> (writer, words the one line holds)
CASES = {
    "arch up the tree": (_torch_file(lambda g, f: {**g, "arch": "../escaped"}), "arch"),
    "arch two up": (_torch_file(lambda g, f: {**g, "arch": "../../escaped"}), "arch"),
    "arch absolute": (_torch_file(lambda g, f: {**g, "arch": str(f / "escaped")}), "arch"),
    "arch not a string": (_torch_file(lambda g, f: {**g, "arch": ["x"]}), "arch"),
    "a list": (_torch_file(lambda g, f: [1, 2, 3]), "holds a list"),
    "no model_cfg": (_torch_file(lambda g, f: {k: v for k, v in g.items() if k != "model_cfg"}),
                     "model_cfg"),
    "a width that is text": (_torch_file(lambda g, f: {**g, "model_cfg": {
        **g["model_cfg"], "vision_cfg": {**g["model_cfg"]["vision_cfg"], "width": "64"}}}),
        "width"),
    "a huge model": (_torch_file(lambda g, f: {**g, "model_cfg": _big_cfg(g)}),
                     "billion parameters"),
    "wrong shapes": (_torch_file(lambda g, f: {**g, "state_dict": _shrunk(g)}), "size mismatch"),
    "state_dict a list": (_torch_file(lambda g, f: {**g, "state_dict": [1]}), "state_dict"),
    "pickled code": (_torch_file(lambda g, f: {"state_dict": {}, "hook": os.system}),
                     "cannot read"),
    "truncated .pt": (_cut(0.5, ".pt"), "cannot read"),
    "truncated .safetensors": (_cut(0.5, ".safetensors"), "cannot read"),
    "a .safetensors that is not one": (_bytes(b"not a safetensors file\n" * 50, ".safetensors"),
                                       "cannot read"),
    "empty .safetensors": (_bytes(b"", ".safetensors"), "cannot read"),
}


def snapshot(*roots: Path) -> dict[Path, tuple[int, int]]:
    """Every path under `roots`, a file with its size and mtime: what a command created or
    changed."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            stat = path.lstat()
            found[path] = (0, 0) if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture
def watched(tmp_path, monkeypatch) -> Callable[[], dict]:
    """tmp_path (which holds the temporary folder open_clip configs are written in, the
    checkpoints and the data) and the user's folders, to snapshot."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    roots = [tmp_path, Path(os.environ["XDG_DATA_HOME"]), Path(os.environ["XDG_CACHE_HOME"]),
             Path(os.environ["HF_HOME"])]
    return lambda: snapshot(*roots)


@pytest.fixture
def data(tmp_path) -> Path:
    """Three captioned photos: media for `index`, pairs for `eval` and `train`."""
    folder = tmp_path / "data"
    for i, colour in enumerate([(200, 0, 0), (0, 0, 200), (0, 200, 0), (200, 200, 0)]):
        write_photo(folder / f"{i}.jpg", colour)
        (folder / f"{i}.txt").write_text(f"photo number {i}")
    return folder


def one_line(result) -> str:
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def command(name: str, data: Path, checkpoint: Path, tmp_path: Path) -> list:
    return {"index": ["index", data, "--db", tmp_path / "db"],
            "eval": ["eval", data],
            "train": ["train", data, "--out", tmp_path / "out.pt", "--epochs", "1"],
            }[name] + ["--pretrained", checkpoint]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["index", "eval", "train"])
def test_a_hostile_checkpoint_is_one_line_and_writes_nothing(tmp_path, cli, good, watched,
                                                             data, case, name):
    write, words = CASES[case]
    checkpoint = write(good, tmp_path)
    before = watched()

    line = one_line(cli(*command(name, data, checkpoint, tmp_path)))

    assert words in line and str(checkpoint) in line
    after = watched()
    changed = {p for p in after.keys() | before.keys() if after.get(p) != before.get(p)}
    # index may open its store before the model loads; nothing else anywhere
    db = tmp_path / "db"
    assert {p for p in changed if p != db and db not in p.parents} == set()


@pytest.mark.parametrize("case", ["arch up the tree", "arch absolute", "a list", "a huge model",
                                  "truncated .pt"])
def test_a_checkpoint_swapped_after_indexing_is_one_line_on_search(tmp_path, cli, good, watched,
                                                                   data, case):
    checkpoint = tmp_path / "model.pt"
    torch.save(good, checkpoint)
    assert cli("index", data, "--db", tmp_path / "db", "--pretrained", checkpoint).exit_code == 0
    swapped = CASES[case][0](good, tmp_path)
    os.replace(swapped, checkpoint)
    before = watched()

    line = one_line(cli("search", "photo", "--db", tmp_path / "db"))

    assert str(checkpoint) in line
    after = watched()
    assert {p for p in after.keys() | before.keys() if after.get(p) != before.get(p)} == set()


@pytest.mark.parametrize("name", ["index", "eval", "train"])
def test_a_model_config_asking_for_a_huge_model_names_the_flag(tmp_path, cli, good, watched,
                                                               data, name):
    config = tmp_path / "huge.json"
    config.write_text(json.dumps(_big_cfg(good)))
    before = watched()
    args = command(name, data, Path("none"), tmp_path)
    line = one_line(cli(*args, "--model", config))
    assert line.startswith(f"error: --model {config}: asks for ~") and "billion parameters" in line
    after = watched()
    db = tmp_path / "db"
    assert {p for p in after.keys() | before.keys() if after.get(p) != before.get(p)
            and p != db and db not in p.parents} == set()


def test_a_config_file_name_that_is_no_model_name_still_builds(tmp_path, good):
    config = tmp_path / "my model.v2 (copy).json"
    config.write_text(json.dumps(good["model_cfg"] | {"embed_dim": 48}))
    loaded = load_model(ModelSpec(str(config), "none"), note=lambda _: None)
    assert loaded.dim == 48 and loaded.arch.startswith("my-model")
    assert open_clip.get_model_config(loaded.arch)["embed_dim"] == 48


@pytest.mark.parametrize("cfg", [
    "retriever-tiny",
    {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
     "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2,
                  "layers": 1}},
], ids=["vit", "resnet"])
def test_the_size_estimate_is_close_to_what_is_built(cfg):
    from retriever.encoding.architectures import MAX_PARAMETERS, estimated_parameters

    if isinstance(cfg, str):
        cfg = open_clip.get_model_config(cfg)
    built = sum(p.numel() for p in CLIP(**cfg).parameters())
    assert abs(estimated_parameters(cfg) - built) / built < 0.1
    assert estimated_parameters(cfg) < MAX_PARAMETERS
