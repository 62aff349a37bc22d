"""Fine-tuning recipes: gradient accumulation and checkpointing change memory, not gradients;
locked towers stay put; reduced precision trains."""

from __future__ import annotations

import copy
import functools
from dataclasses import replace

import pytest
import torch

from retriever.demo import demo_config
from retriever.encoding.models import ModelSpec, load_model
from retriever.errors import UsageError
from retriever.training.datasets import StepBatch
from retriever.training.distributed import Group
from retriever.training.loop import train
from retriever.training.losses import Objective
from retriever.training.optimizer import build_optimizer
from retriever.training.step import Stepper
from retriever.training.synthetic import ALL_SCENES, write_captioned_images

TINY = ModelSpec("retriever-tiny", "none")
INFONCE = Objective()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def tiny():
    return load_model(TINY)


def fresh_model() -> torch.nn.Module:
    return copy.deepcopy(tiny().model)


def fixed_batch() -> StepBatch:
    """12 pairs: seeded noise images and distinct captions."""
    pixels = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return StepBatch(pixels, tiny().tokenizer([s.captions()[1] for s in ALL_SCENES[:12]]), 0)


def step(objective=INFONCE, grad_accum=1, checkpointing=False, precision="fp32"):
    """One step on the fixed batch from the seeded random model."""
    model = fresh_model()
    if not objective.learns_temperature:
        model.logit_scale.requires_grad_(False)
    model.set_grad_checkpointing(checkpointing)
    stepper = Stepper(model, build_optimizer(model, 1e-3, 0.1), objective, Group(), precision,
                      grad_accum)
    result = stepper.step(fixed_batch(), lr=1e-3)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return result, grads, model


def assert_same_gradients(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4,
                                   atol=1e-4 * float(b[name].abs().max()), msg=name)


@pytest.mark.parametrize("objective", [Objective("infonce", distance_weight=0.3),
                                       Objective("distance")])
@pytest.mark.parametrize("grad_accum", [3, 5])  # 12 pairs: 3 x 4, and 5 uneven micro-batches
def test_grad_accumulation_gives_the_whole_batch_gradient(objective, grad_accum):
    whole, whole_grads, _ = step(objective)
    accumulated, accumulated_grads, _ = step(objective, grad_accum=grad_accum)
    assert accumulated.loss == pytest.approx(whole.loss, rel=1e-5)
    assert_same_gradients(accumulated_grads, whole_grads)


def test_naive_accumulation_would_differ():
    """What the cached-embedding accumulation avoids: micro-batches with their own negatives
    give another loss (so the test above can fail)."""
    whole, _, _ = step()
    model = fresh_model()
    stepper = Stepper(model, build_optimizer(model, 1e-3, 0.1), Objective(), Group(), "fp32")
    pixels, tokens, _ = fixed_batch()
    halves = [stepper.step(StepBatch(pixels[s], tokens[s], 0), 1e-3)
              for s in (slice(0, 6), slice(6, 12))]
    assert halves[0] is not None
    assert halves[0].loss != pytest.approx(whole.loss, rel=1e-2)


def test_grad_checkpointing_gives_the_same_gradients():
    _, plain, _ = step()
    _, recomputed, _ = step(checkpointing=True)
    assert_same_gradients(recomputed, plain)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_steps_near_fp32(precision):
    exact, _, exact_model = step()
    reduced, _, reduced_model = step(precision=precision)
    assert reduced.loss == pytest.approx(exact.loss, rel=0.05)
    before = tiny().model.state_dict()
    moved = [float((v - before[k]).abs().max()) for k, v in reduced_model.state_dict().items()]
    assert max(moved) > 1e-4  # it did update (fp16: the scaler found no overflow)


# --- locked towers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_captioned_images(folder, 24, seed=6)
    return folder


@pytest.mark.parametrize(("lock", "frozen", "trained"), [
    ("lock_image", "visual.", "transformer."),
    ("lock_text", "transformer.", "visual."),
])
def test_a_locked_tower_keeps_its_weights(scenes, tmp_path, lock, frozen, trained):
    cfg = replace(demo_config(scenes, tmp_path / "m.pt"), epochs=1, batch_size=8,
                  **{lock: True})
    after = train(cfg).loaded.model.state_dict()
    before = tiny().model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith(frozen) for k in changed)
    assert any(k.startswith(trained) for k in changed)
    assert "logit_scale" in changed  # the temperature trains with either tower


def test_locking_both_towers_is_refused(tmp_path):
    cfg = replace(demo_config(tmp_path, tmp_path / "m.pt"), lock_image=True, lock_text=True)
    with pytest.raises(UsageError, match="--lock-image and --lock-text"):
        train(cfg)
