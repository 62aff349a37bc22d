"""Training retriever-tiny from random weights on the synthetic scenes (~10 s per objective)."""

import csv
import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from retriever.demo import DEMO_IMAGES, demo_config
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.models import ModelSpec, load_model
from retriever.errors import TrainingDiverged, UsageError
from retriever.media.images import open_image
from retriever.training.loop import train
from retriever.training.pairs import load_pairs
from retriever.training.step import Stepper
from retriever.training.synthetic import write_captioned_images

OBJECTIVES = {
    "infonce": {},
    "distance": {"objective": "distance"},
    "infonce+distance": {"distance_weight": 0.5},
}
CLIP_INITIAL_LOGIT_SCALE = math.log(1 / 0.07)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_captioned_images(folder, DEMO_IMAGES, seed=0)
    return folder


@pytest.fixture(scope="module", params=list(OBJECTIVES))
def trained(request, scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "model.pt"
    cfg = replace(demo_config(scenes, out), **OBJECTIVES[request.param])
    lines: list[str] = []
    return cfg, train(cfg, log=lines.append), lines


def test_training_lifts_held_out_recall(trained):
    _, result, _ = trained
    before, after = result.before, result.after
    assert after["images"] == before["images"] == round(DEMO_IMAGES * 0.2)
    t2i_gain = after["text_to_image"]["R@1"] - before["text_to_image"]["R@1"]
    i2t_gain = after["image_to_text"]["R@1"] - before["image_to_text"]["R@1"]
    assert t2i_gain >= 0.2, (before, after)
    assert i2t_gain >= 0.1, (before, after)
    assert after["text_to_image"]["R@5"] >= before["text_to_image"]["R@5"] + 0.5


def test_history_has_epoch_zero_and_one_record_per_epoch(trained):
    cfg, result, lines = trained
    assert [h.epoch for h in result.history] == list(range(cfg.epochs + 1))
    assert result.history[0].train_loss is None
    losses = [h.train_loss for h in result.history[1:]]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert [line.split(",")[0] for line in lines if line.startswith("epoch")] == [
        f"epoch {e}/{cfg.epochs}" for e in range(cfg.epochs + 1)
    ]
    assert result.samples_per_s > 0


def test_only_infonce_learns_the_temperature(trained):
    cfg, result, _ = trained
    scale = result.loaded.model.logit_scale.item()
    if cfg.objective == "distance":
        assert scale == pytest.approx(CLIP_INITIAL_LOGIT_SCALE)
    else:
        assert scale != pytest.approx(CLIP_INITIAL_LOGIT_SCALE, abs=1e-3)
        assert scale <= math.log(100) + 1e-6


def test_checkpoint_reloads_to_the_same_embeddings(trained, scenes):
    cfg, result, _ = trained
    reloaded = load_model(ModelSpec(pretrained=str(result.checkpoint)))
    pairs = load_pairs(scenes)[:8]
    images = [open_image(p.image) for p in pairs]
    texts = [c for p in pairs for c in p.captions]
    in_memory, from_disk = ClipEncoder(result.loaded), ClipEncoder(reloaded)
    np.testing.assert_allclose(in_memory.encode_images(images), from_disk.encode_images(images),
                               atol=1e-6)
    np.testing.assert_allclose(in_memory.encode_texts(texts), from_disk.encode_texts(texts),
                               atol=1e-6)
    untrained = ClipEncoder(load_model(cfg.model)).encode_texts(texts)
    assert not np.allclose(untrained, ClipEncoder(reloaded).encode_texts(texts), atol=1e-3)


def test_checkpoint_records_the_training(trained):
    cfg, result, _ = trained
    extra = load_model(ModelSpec(pretrained=str(result.checkpoint))).extra
    json.dumps(extra)  # plain values only
    assert extra["training"]["objective"] == cfg.objective
    assert extra["training"]["distance_weight"] == cfg.distance_weight
    assert extra["training"]["data"] == str(cfg.data)
    assert extra["training"]["lr"] == pytest.approx(1e-3)  # the from-scratch default
    assert extra["final_metrics"] == result.after
    assert len(extra["history"]) == cfg.epochs + 1


# --- small runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def few_scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("few")
    write_captioned_images(folder, 40, seed=1)
    return folder


def short_run(data, out, seed):
    cfg = replace(demo_config(data, out, seed=seed), epochs=2, batch_size=8)
    return [h.train_loss for h in train(cfg).history[1:]]


def test_same_seed_same_losses(few_scenes, tmp_path):
    first = short_run(few_scenes, tmp_path / "a.pt", seed=7)
    assert short_run(few_scenes, tmp_path / "b.pt", seed=7) == first
    assert short_run(few_scenes, tmp_path / "c.pt", seed=8) != first


def test_unreadable_training_images_are_skipped_and_counted(tmp_path):
    write_captioned_images(tmp_path, 12)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "broken.txt").write_text("a caption for nothing\n")
    cfg = replace(demo_config(tmp_path, tmp_path / "out" / "m.pt"), epochs=1, batch_size=4,
                  val_fraction=0.0)

    result = train(cfg)

    assert result.history[1].unreadable == 1
    assert result.before == {} and result.after == {}
    assert math.isfinite(result.history[1].train_loss)
    assert result.checkpoint.is_file()


def test_fine_tuning_a_checkpoint_starts_from_its_weights(few_scenes, tmp_path):
    first = train(replace(demo_config(few_scenes, tmp_path / "a.pt"), epochs=2, batch_size=8))
    spec = ModelSpec(pretrained=str(first.checkpoint))
    again = train(replace(demo_config(few_scenes, tmp_path / "b.pt"), model=spec, epochs=1,
                          batch_size=8))
    assert again.before == first.after  # same held-out split, same weights
    assert load_model(ModelSpec(pretrained=str(again.checkpoint))).extra["training"]["lr"] == 1e-5


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(("change", "flag"), [
    ({"objective": "distance", "distance_weight": 0.5}, "--distance-weight"),
    ({"objective": "triplet"}, "--objective"),
    ({"batch_size": 1}, "--batch-size 1:"),
    ({"lr": NAN}, "--lr nan: must be a positive finite number"),
    ({"lr": INF}, "--lr inf:"),
    ({"lr": 0.0}, "--lr 0.0:"),
    ({"lr": -1e-4}, "--lr -0.0001:"),
    ({"epochs": 0}, "--epochs 0:"),
    ({"warmup": NAN}, "--warmup nan:"),
    ({"warmup": 1.0}, "--warmup 1.0:"),
    ({"weight_decay": -0.1}, "--weight-decay -0.1:"),
    ({"weight_decay": INF}, "--weight-decay inf:"),
    ({"val_fraction": 1.0}, "--val-fraction 1.0:"),
    ({"val_fraction": NAN}, "--val-fraction nan:"),
    ({"objective": "distance", "margin": 0.0}, "--margin 0.0:"),
    ({"margin": NAN}, "--margin nan:"),
    ({"distance_weight": NAN}, "--distance-weight nan:"),
    ({"distance_weight": -1.0}, "--distance-weight -1.0:"),
    ({"grad_accum": 0}, "--grad-accum 0:"),
    ({"nproc": 0}, "--nproc 0:"),
    ({"val_every": -1}, "--val-every -1:"),
    ({"save_every": -1}, "--save-every -1:"),
    ({"num_workers": -1}, "--num-workers -1:"),
    ({"samples_per_epoch": 0}, "--samples-per-epoch 0:"),
])
def test_bad_settings_fail_before_loading_anything(tmp_path, monkeypatch, change, flag):
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model before checking the settings")

    monkeypatch.setattr("retriever.training.loop.load_model", no_loading)
    cfg = replace(demo_config(tmp_path / "absent", tmp_path / "m.pt"), **change)
    with pytest.raises(UsageError, match=re.escape(flag)):
        train(cfg)


def test_an_out_that_is_a_folder_is_refused_before_anything_is_written(cli, tmp_path):
    (tmp_path / "runs").mkdir()
    result = cli("train", tmp_path / "absent", "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"--out {tmp_path / 'runs'} is a folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no runs.curve.csv beside it


def test_an_out_under_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    cfg = demo_config(tmp_path / "absent", tmp_path / "notes.txt" / "m.pt")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        train(cfg)


def test_the_cli_refuses_a_nan_learning_rate_in_one_line(cli, tmp_path):
    result = cli("train", tmp_path, "--out", tmp_path / "m.pt", "--lr", "nan")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--lr nan: must be a positive finite number" in result.stderr


# --- divergence -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twelve(tmp_path_factory):
    folder = tmp_path_factory.mktemp("twelve")
    write_captioned_images(folder, 12, seed=1)
    return folder


def test_a_diverging_run_exits_non_zero_in_one_line_and_writes_no_checkpoint(cli, twelve,
                                                                               tmp_path):
    out = tmp_path / "m.pt"
    result = cli("train", twelve, "--out", out, "--model", "retriever-tiny", "--pretrained",
                 "none", "--lr", "1e30", "--epochs", "2", "--batch-size", "4",
                 "--save-every", "1")

    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]]  # one line, and the last
    assert "training diverged at step 2 (epoch 1): the loss is nan" in errors[0]
    assert "lower --lr" in errors[0]
    assert "Traceback" not in result.output and "checkpoint:" not in result.stdout
    assert not out.exists()
    # the curve shows the run up to its end; the state saved at step 1 is gone with it
    with (tmp_path / "m.curve.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]
    assert len(losses) == 2 and math.isfinite(losses[0]) and math.isnan(losses[1])
    assert not (tmp_path / "m.resume.pt").exists()


def test_weights_broken_by_the_last_step_are_never_saved(twelve, tmp_path, monkeypatch):
    real_step = Stepper.step

    def breaking_step(self, batch, lr):
        result = real_step(self, batch, lr)  # a finite loss, then weights no model can use
        with torch.no_grad():
            next(self.module.parameters()).fill_(math.inf)
        return result

    monkeypatch.setattr(Stepper, "step", breaking_step)
    out = tmp_path / "m.pt"
    cfg = replace(demo_config(twelve, out), epochs=1, batch_size=12, val_fraction=0.0)

    with pytest.raises(TrainingDiverged, match="weights are not finite") as caught:
        train(cfg)

    assert (caught.value.step, caught.value.epoch) == (1, 1)  # the only step
    assert not out.exists() and not (tmp_path / "m.resume.pt").exists()


def test_empty_captions_are_dropped_with_a_word(twelve, tmp_path):
    images = sorted(twelve.glob("*.jpg"))
    rows = [f"{p},{p.with_suffix('.txt').read_text().splitlines()[0]}" for p in images]
    rows += [f"{images[0]},  ", f"{images[0]},"]  # images[0] keeps its caption
    uncaptioned = tmp_path / "copy.jpg"
    uncaptioned.write_bytes(images[1].read_bytes())
    rows += [f"{uncaptioned},"]  # an image whose only caption is empty
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,caption\n" + "\n".join(rows) + "\n")
    lines: list[str] = []

    train(replace(demo_config(table, tmp_path / "m.pt"), epochs=1, batch_size=12,
                  val_fraction=0.0), log=lines.append)

    assert (f"dropped 3 empty captions in {table} and skipped 1 images that had no other "
            f"caption") in lines
    assert "12 training images, 0 held out for validation" in lines


def test_val_every_scores_the_held_out_set_between_epochs(few_scenes, tmp_path):
    cfg = replace(demo_config(few_scenes, tmp_path / "m.pt"), epochs=2, batch_size=8,
                  val_every=2)  # 32 training images: 4 steps per epoch
    lines: list[str] = []
    result = train(cfg, log=lines.append)
    with result.curve_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["val_t2i_R@1"]] == [0, 2, 4, 6, 8]
    assert [line.split(":")[0] for line in lines if line.startswith("step")] == [
        "step 2/8", "step 6/8"]  # epoch ends (4, 8) report in their epoch line
    assert any(line == f"curves: {result.curve_csv} and {result.curve_png}" for line in lines)


def test_the_cli_refuses_conflicting_recipes_in_one_line(cli, tmp_path):
    result = cli("train", tmp_path, "--out", tmp_path / "m.pt", "--lock-image", "--lock-text")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--lock-image and --lock-text" in result.stderr
