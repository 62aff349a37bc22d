"""The resumable training state: what a run interrupted at a save point needs to continue the
same curve with `--resume`.

One file, written atomically by rank 0 at every save point (`--save-every` steps and each
epoch's end) and removed when the run completes. Like checkpoints it loads with
`torch.load(weights_only=True)`: only dicts, lists, tuples, numbers, strings and tensors.

  format, version   "retriever-train-state", 1
  step              optimizer steps done
  model             the model's state dict (CPU tensors)
  optimizer         AdamW's state dict (moments and step counts)
  scaler            the fp16 GradScaler's state dict ({} when unused)
  rng               torch (CPU and every GPU), numpy and Python RNG states
  settings          {flag: value} for every setting that shapes the curve; a resumed run must
                    match them all
  progress          the run's record so far (history, curve rows, the current epoch's sums)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retriever.atomic import replacing
from retriever.errors import CheckpointError, UsageError

STATE_FORMAT = "retriever-train-state"
STATE_VERSION = 1


@dataclass
class TrainState:
    step: int  # optimizer steps done
    model: dict[str, torch.Tensor]  # state dict of the unwrapped model
    optimizer: dict[str, Any]  # optimizer.state_dict()
    scaler: dict[str, Any]  # GradScaler.state_dict(); {} when fp16 scaling is off
    rng: dict[str, Any]  # capture_rng()
    settings: dict[str, Any]  # {flag: value} that shape the curve
    progress: dict[str, Any]  # the training loop's record so far, plain values


def save_state(path: Path, state: TrainState) -> None:
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **state.__dict__}
    payload["model"] = {k: v.detach().cpu() for k, v in state.model.items()}
    with replacing(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path) -> TrainState:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise UsageError(f"--resume {path} does not exist: pass the .resume.pt file an "
                         f"interrupted run left beside its --out") from err
    except Exception as err:  # torch raises many types for a bad file
        raise CheckpointError(f"cannot read --resume {path} ({type(err).__name__}): pass a "
                              f".resume.pt file written by `retriever train`") from err
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"--resume {path} is not a training state: pass the .resume.pt "
                              f"file beside an interrupted run's --out, not its checkpoint")
    fields = TrainState.__dataclass_fields__
    return TrainState(**{k: payload[k] for k in fields})


def check_settings(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a run with settings that would change its curve."""
    for flag, value in current.items():
        if saved.get(flag) != value:
            raise UsageError(f"--resume {path} was saved with {flag} {saved.get(flag)}, this run "
                             f"has {value}: rerun with the interrupted run's settings")


def capture_rng() -> dict[str, Any]:
    keys_name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [keys_name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss,
                  cached],
        "python": random.getstate(),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    keys_name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((keys_name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_tuples(rng["python"]))


def _tuples(value: Any) -> Any:
    """random.setstate wants the nested tuples getstate gave; a round trip may make lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value
