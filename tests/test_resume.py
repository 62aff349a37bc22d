"""An interrupted run resumed from its last save point ends where an uninterrupted one does."""

from __future__ import annotations

import csv
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from retriever.demo import demo_config
from retriever.encoding.models import ModelSpec, load_model
from retriever.errors import CheckpointError, UsageError
from retriever.training.loop import run_file, train
from retriever.training.synthetic import write_captioned_images

STEPS_PER_EPOCH = 4  # 32 training images (40, 20% held out) in steps of 8
EPOCHS = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupt:
    """A Progress that presses Ctrl-C once `after` training steps are done."""

    def __init__(self, after: int) -> None:
        self.after, self.done = after, 0

    @contextmanager
    def task(self, description, total):
        yield self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.done >= self.after:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_captioned_images(folder, 40, seed=2)
    return folder


def config(scenes, out):
    # augmentation on: the random crops must replay identically after the resume too
    return replace(demo_config(scenes, out), epochs=EPOCHS, batch_size=8, augment=True,
                   save_every=3)


def curve(path):
    with path.open() as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(scenes, tmp_path_factory):
    return train(config(scenes, tmp_path_factory.mktemp("whole") / "m.pt"))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(scenes, uninterrupted, tmp_path):
    cfg = config(scenes, tmp_path / "m.pt")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=Interrupt(after=5))
    state = run_file(cfg.out, "resume.pt")
    assert state.is_file() and not cfg.out.exists()
    assert torch.load(state, weights_only=True)["step"] == 3  # the last save point before 5

    lines: list[str] = []
    resumed = train(replace(cfg, resume=state), log=lines.append)

    assert f"resumed from {state} at step 3/{EPOCHS * STEPS_PER_EPOCH}" in lines
    assert not state.exists()  # a completed run leaves no resumable state behind
    assert curve(resumed.curve_csv) == curve(uninterrupted.curve_csv)
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in
                                                       uninterrupted.history]
    assert resumed.after == uninterrupted.after
    a, b = (load_model(ModelSpec(pretrained=str(r.checkpoint))).model.state_dict()
            for r in (resumed, uninterrupted))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_the_curve_has_every_step_and_the_validations(uninterrupted):
    rows = curve(uninterrupted.curve_csv)
    assert [int(r["step"]) for r in rows] == list(range(EPOCHS * STEPS_PER_EPOCH + 1))
    validated = [int(r["step"]) for r in rows if "val_t2i_R@1" in r]
    assert validated == [0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert "loss" not in rows[0]  # before training: recall only
    assert all(float(r["loss"]) == pytest.approx(float(r["loss_infonce"])) for r in rows[1:])
    lrs = [float(r["lr"]) for r in rows[1:]]
    assert lrs[0] == max(lrs) == pytest.approx(1e-3)  # one warmup step (10% of 8) to the peak
    assert lrs[1:] == sorted(lrs[1:], reverse=True) and lrs[-1] < 0.1 * lrs[0]  # cosine decay
    temperatures = [float(r["temperature"]) for r in rows[1:]]
    assert temperatures[0] != temperatures[-1]  # infonce learns it
    assert uninterrupted.curve_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resuming_with_other_settings_is_refused(scenes, tmp_path):
    cfg = config(scenes, tmp_path / "m.pt")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=Interrupt(after=3))
    state = run_file(cfg.out, "resume.pt")
    with pytest.raises(UsageError, match="--batch-size 8, this run has 4"):
        train(replace(cfg, batch_size=4, resume=state))


def test_resuming_from_a_checkpoint_says_which_file_to_pass(uninterrupted, scenes, tmp_path):
    cfg = replace(config(scenes, tmp_path / "m.pt"), resume=uninterrupted.checkpoint)
    with pytest.raises(CheckpointError, match=r"not a training state: pass the \.resume\.pt"):
        train(cfg)
