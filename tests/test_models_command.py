"""`retriever models`: every family and pretrained tag open_clip publishes, which tags are cached
(Hugging Face cache wherever HF_HUB_CACHE / HF_HOME / XDG_CACHE_HOME put it, and open_clip's
URL cache), their sizes, offline and without importing torch; bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from retriever.encoding.architectures import estimated_parameters
from retriever.encoding.catalogue import model_configs
from retriever.encoding.families import FAMILIES, family_of
from retriever.encoding.weights import known_tags

ROOT = Path(__file__).parent.parent
# runs the CLI as `retriever` does, then says whether torch or open_clip was imported
PROBE = ("import sys, runpy; sys.argv = ['retriever', 'models', *sys.argv[1:]]\n"
         "try: runpy.run_module('cli', run_name='__main__')\n"
         "except SystemExit as e: assert not e.code, e.code\n"
         "print('HEAVY', sorted(m for m in ('torch', 'open_clip') if m in sys.modules), "
         "file=sys.stderr)")


def run_models(env: dict[str, str], *args: str) -> tuple[list[dict], str]:
    run = subprocess.run([sys.executable, "-c", PROBE, "--json", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()], run.stderr


def plant_hub_weights(hub: Path, repo: str, tensors: dict[str, np.ndarray]) -> Path:
    """`repo`'s open_clip_model.safetensors in a huggingface_hub cache, laid out as it lays
    out a download (refs/main -> snapshots/<commit>/file)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    target = folder / "snapshots" / commit / "open_clip_model.safetensors"
    target.parent.mkdir(parents=True)
    save_file(tensors, str(target))
    return target


def test_every_architecture_and_tag_is_listed_by_family(cli):
    result = cli("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["model"]: row for row in map(json.loads, result.stdout.splitlines())}
    tags = known_tags()
    assert set(rows) == set(tags) | set(model_configs()) and "retriever-tiny" in rows
    assert {row["family"] for row in rows.values()} == set(FAMILIES)
    for name, row in rows.items():
        assert row["family"] == family_of(name)
        assert [t["tag"] for t in row["tags"]] == list(tags.get(name, {}))
        assert not any(t["cached"] for t in row["tags"])  # conftest's HF_HOME is empty
    vit = rows["ViT-B-32"]  # open_clip's ViT-B-32 has 151,277,313 parameters
    assert vit["parameters_from"] == "config" and abs(vit["parameters"] / 151_277_313 - 1) < 0.03
    assert rows["MobileCLIP2-S0"]["parameters"] is None  # a timm tower: not known uncached
    families = [FAMILIES.index(row["family"]) for row in rows.values()]
    assert families == sorted(families)


def test_the_configs_read_as_files_are_open_clips():
    """The speed twin: `model_configs` reads open_clip's config folder as files; open_clip, in
    a fresh process (no config registered by a test), lists the same architectures with the
    same configs, ours adding only the bundled ones."""
    from retriever.encoding.catalogue import BUNDLED_CONFIGS

    program = ("import json, open_clip; print(json.dumps({name: open_clip.get_model_config(name)"
               " for name in open_clip.list_models()}))")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         check=True).stdout
    theirs = json.loads(out.strip().splitlines()[-1])
    bundled = {path.stem for path in BUNDLED_CONFIGS.glob("*.json")}
    ours = model_configs()
    assert "ViT-B-32" in theirs and bundled == {"retriever-tiny"}
    assert {name: cfg for name, cfg in ours.items() if name not in bundled} == theirs


def test_family_and_cached_narrow_the_list(cli):
    mobile = cli("models", "--family", "mobileclip2")
    assert mobile.exit_code == 0, mobile.output
    names = [line.split()[1] for line in mobile.stdout.splitlines()]
    assert names and all(n.startswith("MobileCLIP2-") for n in names)
    assert {n for n in known_tags() if family_of(n) == "mobileclip2"} <= set(names)
    none = cli("models", "--cached")
    assert none.exit_code == 0 and none.stdout == "" and "0 cached" in none.stderr


@pytest.mark.parametrize("variable", ["HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"])
def test_cached_weights_are_found_where_the_variables_put_them(tmp_path, variable):
    """A tag cached by huggingface_hub (MobileCLIP2-S0) and one fetched by URL into open_clip's
    cache (RN50 openai): both marked cached with their size; the safetensors file's header
    counts the parameters. Nothing is downloaded; torch is never imported."""
    place = tmp_path / "cache"
    hub = {"HF_HOME": place / "hub", "HF_HUB_CACHE": place,
           "XDG_CACHE_HOME": place / "huggingface" / "hub"}[variable]
    repo = known_tags()["MobileCLIP2-S0"]["dfndr2b"]["hf_hub"].strip("/")
    planted = plant_hub_weights(hub, repo, {"a": np.zeros((3, 4), np.float32),
                                            "b": np.zeros(5, np.float16)})
    home = tmp_path / "home"
    url = known_tags()["RN50"]["openai"]["url"]
    clip_file = home / ".cache" / "clip" / url.rsplit("/", 1)[-1]
    clip_file.parent.mkdir(parents=True)
    clip_file.write_bytes(b"x" * 1234)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME")}
    env.update({variable: str(place), "HOME": str(home), "HF_HUB_OFFLINE": "1"})
    rows, stderr = run_models(env, "--cached")
    # the same file serves every architecture naming it (RN50 and RN50-quickgelu: one URL)
    sharing = {(arch, tag) for arch, tags in known_tags().items() for tag, cfg in tags.items()
               if cfg["hf_hub"].strip("/") == repo or cfg["url"] == url}
    assert {(row["model"], t["tag"]) for row in rows for t in row["tags"]} == sharing
    assert "HEAVY []" in stderr and f"{len(sharing)} cached" in stderr
    by_name = {row["model"]: row for row in rows}
    (mobile,), (rn50,) = by_name["MobileCLIP2-S0"]["tags"], by_name["RN50"]["tags"]
    assert (mobile["tag"], mobile["path"], mobile["bytes"]) == (
        "dfndr2b", str(planted.resolve()), planted.stat().st_size)
    assert by_name["MobileCLIP2-S0"]["parameters"] == 3 * 4 + 5
    assert by_name["MobileCLIP2-S0"]["parameters_from"] == "weights"
    assert (rn50["tag"], rn50["bytes"], rn50["path"]) == ("openai", 1234, str(clip_file))
    assert by_name["RN50"]["parameters_from"] == "config"  # a .pt's header is not read


def test_damaged_caches_are_listed_not_raised(tmp_path):
    """A cache path that is a file, and a cached weights file that is not safetensors: the
    list still comes, the damaged file shown cached with its size and no parameter count."""
    hub = tmp_path / "hub"
    repo = known_tags()["EVA02-B-16"]["merged2b_s8b_b131k"]["hf_hub"].strip("/")
    bad = plant_hub_weights(hub, repo, {"a": np.zeros(2, np.float32)})
    bad.write_bytes(b"\xff" * 64)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    rows, _ = run_models(env, "--family", "eva")
    eva = {row["model"]: row for row in rows}["EVA02-B-16"]
    assert eva["tags"][0]["cached"] and eva["tags"][0]["bytes"] == 64
    assert eva["parameters"] is None
    (tmp_path / "afile").write_text("not a folder")
    env["HF_HUB_CACHE"] = str(tmp_path / "afile")
    rows, stderr = run_models(env)
    assert len(rows) == len(model_configs().keys() | known_tags().keys())
    assert "0 cached" in stderr


@pytest.mark.parametrize("args, words", [
    (("--family", "vit"), "--family 'vit': use one of clip, siglip"),
    (("--family", ""), "--family '': use one of"),
])
def test_bad_input_is_one_line(cli, args, words):
    result = cli("models", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {words}") and line.endswith("mobileclip2, eva")
    assert result.stdout == ""


def test_parameters_are_the_configs_estimate():
    """What the list shows for an architecture without cached weights is the estimate the
    builder refuses large configs by (one truth for both)."""
    configs = model_configs()
    rows = {r["model"]: r for r in map(json.loads, subprocess.run(
        [sys.executable, "-m", "cli", "models", "--json", "--family", "clip"], cwd=ROOT,
        capture_output=True, text=True, timeout=300).stdout.splitlines())}
    for name in ("RN50", "ViT-L-14", "retriever-tiny"):
        assert rows[name]["parameters"] == estimated_parameters(configs[name])
