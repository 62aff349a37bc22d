"""Two gloo processes on CPU train exactly like one process on their combined batch.

Adam's update hardly depends on the gradient's scale (its first step is ~lr x sign(g)), so equal
weights alone would not catch a gradient off by a factor: the step-level test compares the
gradients themselves as well as the loss and the updated weights.

The learning rate is 1e-4, not the from-scratch 1e-3: some gradients are zero in exact
arithmetic (an attention key bias shifts every score of a query alike, which softmax ignores)
and float noise of ~1e-9 in them becomes an Adam update of up to lr x 1e-3. At 1e-3 that is
already 4e-6..9e-6 apart between the two runs; at 1e-4 it is 10x below the 1e-5 tolerance while
real updates (1e-4) are 10x above it.
"""

from __future__ import annotations

import copy
import csv
import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from retriever.encoding.models import ModelSpec, load_model
from retriever.settings import Settings
from retriever.training.datasets import StepBatch
from retriever.training.distributed import Group, join, leave
from retriever.training.loop import TrainConfig, train
from retriever.training.losses import Objective
from retriever.training.optimizer import build_optimizer
from retriever.training.step import Stepper
from retriever.training.synthetic import ALL_SCENES, write_captioned_images

TINY = ModelSpec("retriever-tiny", "none")
LR = 1e-4  # updates of ~1e-4 per weight: 10x the weight tolerance (see the docstring)
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
GRAD_RTOL = 1e-4  # of each gradient tensor's largest entry


@dataclass(frozen=True)
class Case:
    objective: Objective
    grad_accum: int  # micro-batches per process
    rows: tuple[int, int]  # pairs held by rank 0 and rank 1; together the reference batch


CASES = {
    "infonce+distance": Case(Objective("infonce", distance_weight=0.5), 1, (4, 4)),
    "distance": Case(Objective("distance", margin=1.2), 1, (4, 4)),
    "uneven batches": Case(Objective("infonce"), 1, (5, 3)),
    "grad-accum 2": Case(Objective("infonce"), 2, (4, 4)),
}


@functools.cache
def tiny():
    return load_model(TINY)  # seeded random weights: the same in every process


def global_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 32, 32) pixels and (n, 32) caption tokens, the same in every process."""
    pixels = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    captions = [ALL_SCENES[i * 7].captions()[0] for i in range(n)]
    return pixels, tiny().tokenizer(captions)


def one_step(case: Case, group: Group, rows: slice, grad_accum: int) -> dict:
    model = copy.deepcopy(tiny().model)
    if not case.objective.learns_temperature:
        model.logit_scale.requires_grad_(False)
    stepper = Stepper(model, build_optimizer(model, LR, 0.1), case.objective, group, "fp32",
                      grad_accum)
    pixels, tokens = global_batch(sum(case.rows))
    result = stepper.step(StepBatch(pixels[rows], tokens[rows], 0), LR)
    assert result is not None
    return {"loss": result.loss, "terms": result.terms, "pairs": result.pairs,
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None},
            "weights": {k: v.clone() for k, v in model.state_dict().items()}}


def rank_main(rank: int, port: int, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    group = join(torch.device("cpu"), Settings.from_environ(os.environ))  # as the CLI reads it
    try:
        results = {}
        for name, case in CASES.items():
            start = 0 if rank == 0 else case.rows[0]
            results[name] = one_step(case, group, slice(start, start + case.rows[rank]),
                                     case.grad_accum)
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        leave(group)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(rank_main, args=(free_port(), out), nprocs=2, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def largest_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_step_like_one_process_on_the_global_batch(two_processes, name):
    case = CASES[name]
    single = one_step(case, Group(), slice(None), grad_accum=1)
    for ranked in two_processes:
        got = ranked[name]
        assert got["pairs"] == single["pairs"] == sum(case.rows)
        assert got["loss"] == pytest.approx(single["loss"], rel=LOSS_RTOL)
        assert got["terms"] == pytest.approx(single["terms"], rel=LOSS_RTOL)
        assert got["grads"].keys() == single["grads"].keys()
        for param, grad in single["grads"].items():
            scale = float(grad.abs().max())
            assert scale > 0, param
            assert float((got["grads"][param] - grad).abs().max()) <= GRAD_RTOL * scale, param
        assert largest_gap(got["weights"], single["weights"]) <= WEIGHT_ATOL
    initial = tiny().model.state_dict()
    assert largest_gap(single["weights"], initial) >= 5 * WEIGHT_ATOL  # the step did move


# --- end to end: `retriever train --nproc 2` --------------------------------------------------


def curve_losses(path: Path) -> list[float]:
    with path.open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row["loss"]]


@pytest.mark.slow
def test_train_nproc_2_matches_one_process_with_twice_the_batch(tmp_path, cli):
    data = tmp_path / "scenes"
    write_captioned_images(data, 8, seed=3)  # one step of 8 pairs
    common = {"model": TINY, "epochs": 1, "val_fraction": 0.0, "lr": LR}
    train(TrainConfig(data, tmp_path / "one.pt", batch_size=8, **common))

    launched = cli("train", data, "--out", tmp_path / "two.pt", "--model", "retriever-tiny",
                   "--pretrained", "none", "--epochs", "1", "--val-fraction", "0", "--lr", LR,
                   "--batch-size", "4", "--nproc", "2")

    assert launched.exit_code == 0, launched.output
    assert "training in 2 processes (gloo)" in launched.stderr
    assert launched.stdout.count("checkpoint:") == 1

    one, two = curve_losses(tmp_path / "one.curve.csv"), curve_losses(tmp_path / "two.curve.csv")
    assert len(one) == len(two) == 1
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    weights = [load_model(ModelSpec(pretrained=str(tmp_path / f"{n}.pt"))).model.state_dict()
               for n in ("one", "two")]
    assert largest_gap(*weights) <= WEIGHT_ATOL
    assert largest_gap(weights[0], tiny().model.state_dict()) >= 5 * WEIGHT_ATOL
