"""Loading open_clip models: names, config files, pretrained tags, hf-hub ids and checkpoints.

Everything that builds a model goes through `load_model`, so `index`, `search`, `train` and `eval`
resolve `--model` / `--pretrained` the same way, and a checkpoint written by `retriever train`
loads through the same path as any other weights file.

Resolution of `ModelSpec(model, pretrained)`:
  pretrained is a retriever checkpoint  -> architecture and preprocessing from the checkpoint
  pretrained is another file            -> `model` architecture + that state dict
  pretrained "none"                     -> `model` architecture, random weights (seeded)
  pretrained "hf-hub:org/repo"          -> config and weights from the hub (`model` is ignored)
  pretrained a tag                      -> open_clip's tag for `model`, cached or downloaded
  pretrained None                       -> the default tag for `model`, random for config files

Which architecture a `--model` names, and whether a config can be built: architectures.py.
Writing, reading and checking checkpoint files, and a model's fingerprint: checkpoints.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

from retriever.encoding.architectures import (
    file_preprocess,
    register_arch,
    register_bundled_configs,
    resolve_arch,
)
from retriever.encoding.checkpoints import (
    CHECKPOINT_FIX,
    CHECKPOINT_FORMAT,
    MISFITS,
    brief,
    checkpoint_problem,
    read_weights,
    state_dict_problem,
)
from retriever.encoding.hf_sources import require_sources
from retriever.encoding.specs import ModelId, ModelSpec
from retriever.encoding.weights import (
    DEFAULT_MODEL,
    RANDOM,
    cached_weights,
    default_tag,
    require_online,
    weights_url,
)
from retriever.errors import CheckpointError, ModelMismatch, WeightsUnavailable

# Random weights are seeded so two processes building `--pretrained none` get the same model
# (an index built with random weights stays searchable; benchmarks compare identical compute).
RANDOM_SEED = 0


def print_note(line: str) -> None:
    """The default `note` of `load_model`: one "note: ..." line on stderr."""
    print(f"note: {line}", file=sys.stderr)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # open_clip CLIP / CustomTextCLIP, eval mode, on `device`
    preprocess: Callable[[Any], torch.Tensor]  # PIL image -> (3, H, W) for inference
    train_preprocess: Callable[[Any], torch.Tensor]  # same, with open_clip's train augmentation
    tokenizer: Any  # open_clip tokenizer: list[str] -> (n, context_length) int64
    arch: str  # the name open_clip knows the architecture by
    config: dict[str, Any]  # open_clip model config (embed_dim, vision_cfg, text_cfg)
    model_id: ModelId
    device: torch.device
    extra: dict[str, Any] = field(default_factory=dict)  # checkpoint metadata (training record)
    # the preprocess_cfg of the model's config file (architectures.file_preprocess), if it has
    # one: part of the model's fingerprint, as the config is
    file_preprocess: dict[str, Any] | None = None

    @property
    def dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(spec: ModelSpec, device: torch.device | None = None,
               note: Callable[[str], None] = print_note) -> LoadedModel:
    """Build the model `spec` names; see the module docstring for the resolution rules.

    `note` is told what the user may not expect (random weights)."""
    register_bundled_configs()
    device = device or default_device()
    pretrained = spec.pretrained
    if pretrained and pretrained != RANDOM and not pretrained.startswith("hf-hub:"):
        path = Path(pretrained).expanduser()
        if path.is_file():
            return _load_file(spec.model, path, device)
        if _looks_like_path(pretrained):
            raise CheckpointError(
                f"checkpoint {pretrained} does not exist: pass an existing file to --pretrained"
            )
    if pretrained and pretrained.startswith("hf-hub:"):
        return _load_hub(pretrained, device)
    model = spec.model or DEFAULT_MODEL
    if model.startswith("hf-hub:"):
        return _load_hub(model, device)
    arch, config_path = resolve_arch(model)
    name = str(config_path) if config_path else arch
    if pretrained is None:
        pretrained = (default_tag(arch, open_clip.list_pretrained_tags_by_model(arch))
                      if config_path is None else RANDOM)
    if pretrained == RANDOM:
        # a tokenizer that cannot be had is the one line told, before the note
        require_sources(open_clip.get_model_config(arch) or {}, arch)
        note(f"{name} built with random weights (--pretrained none)")
        with _seeded(RANDOM_SEED):
            return _build_configured(arch, ModelId(name, RANDOM), device, config_path)
    return _load_tag(arch, pretrained, device)


# --- resolution helpers -----------------------------------------------------------------------


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw from torch's CPU generator (where open_clip initialises weights) seeded with
    `seed`, and put its state back after: building a model leaves the caller's RNG alone."""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


# --- builders ---------------------------------------------------------------------------------


def _build_configured(arch: str, model_id: ModelId, device: torch.device,
                      config_path: Path | None, weights: str | None = None) -> LoadedModel:
    """`_build` with the preprocessing of the model's config file, if it gives one."""
    pp = file_preprocess(config_path) if config_path is not None else None
    loaded = _build(arch, model_id, device, weights, pp)
    loaded.file_preprocess = pp
    return loaded


def _build(
    arch: str,
    model_id: ModelId,
    device: torch.device,
    weights: str | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
) -> LoadedModel:
    pp = preprocess_cfg or {}
    require_sources(open_clip.get_model_config(arch) or {}, arch)  # its HF tokenizer, offline
    model, train_pp, val_pp = open_clip.create_model_and_transforms(
        arch,
        pretrained=weights,
        device=device,
        image_mean=pp.get("mean"),
        image_std=pp.get("std"),
        image_interpolation=pp.get("interpolation"),
        image_resize_mode=pp.get("resize_mode"),
        weights_only=True,
        # a Hugging Face text tower is built from its config alone: its weights are the open_clip
        # checkpoint's (or random), never a second download of the text model's own
        pretrained_text=False,
    )
    model.eval()
    config = open_clip.get_model_config(arch)
    if config is None:  # hf-hub models are not registered by name
        config = open_clip.get_model_config(model_id.name)
    return LoadedModel(
        model=model,
        preprocess=val_pp,
        train_preprocess=train_pp,
        tokenizer=open_clip.get_tokenizer(
            arch if arch in open_clip.list_models() else model_id.name
        ),
        arch=arch,
        config=config,
        model_id=model_id,
        device=device,
    )


def _load_file(model: str | None, path: Path, device: torch.device) -> LoadedModel:
    path = path.resolve()
    payload = read_weights(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return _load_retriever_checkpoint(model, path, payload, device)
    problem = state_dict_problem(payload)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} {problem}: {CHECKPOINT_FIX}")
    return _load_state_file(model, path, device)


def _load_retriever_checkpoint(
    model: str | None, path: Path, payload: dict[str, Any], device: torch.device
) -> LoadedModel:
    problem = checkpoint_problem(payload)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}: {CHECKPOINT_FIX}")
    cfg = payload["model_cfg"]
    arch = register_arch(payload["arch"], cfg)
    if model is not None:
        wanted, _ = resolve_arch(model)
        if open_clip.get_model_config(wanted) != cfg:
            raise ModelMismatch(
                f"checkpoint {path} holds a {payload['arch']} model, not {model}: "
                f"drop --model (the checkpoint describes itself)"
            )
    try:
        loaded = _build(arch, ModelId(arch, str(path)), device,
                        preprocess_cfg=payload.get("preprocess_cfg"))
        loaded.model.load_state_dict(payload["state_dict"])
    except MISFITS as err:
        raise CheckpointError(f"checkpoint {path} does not fit its own config "
                              f"({type(err).__name__}: {brief(err)})") from err
    loaded.model.to(device).eval()
    loaded.extra = dict(payload.get("extra") or {})
    return loaded


def _load_state_file(model: str | None, path: Path, device: torch.device) -> LoadedModel:
    """A plain open_clip state dict (e.g. open_clip_pytorch_model.bin); --model names the arch."""
    from safetensors import SafetensorError

    arch, config_path = resolve_arch(model or DEFAULT_MODEL)
    try:
        return _build_configured(arch, ModelId(str(config_path or arch), str(path)), device,
                                 config_path, weights=str(path))
    except (*MISFITS, SafetensorError, StopIteration) as err:
        raise CheckpointError(
            f"weights {path} do not fit {model or DEFAULT_MODEL}: pass the matching --model "
            f"({type(err).__name__}: {brief(err)})"
        ) from err


def _load_tag(arch: str, tag: str, device: torch.device) -> LoadedModel:
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none published"
        raise WeightsUnavailable(
            f"{arch} has no pretrained tag {tag!r} (known: {tags}); "
            f"pass a known tag or a local weights file to --pretrained"
        )
    cached = cached_weights(cfg)
    model_id = ModelId(arch, tag)
    if cached is None:
        require_online(weights_url(cfg), f"{arch} {tag}")
        return _build(arch, model_id, device, weights=tag)
    return _build(arch, model_id, device, weights=str(cached), preprocess_cfg=cfg)


def _load_hub(hub_id: str, device: torch.device) -> LoadedModel:
    from huggingface_hub import constants, try_to_load_from_cache

    repo = hub_id.removeprefix("hf-hub:")
    cached = try_to_load_from_cache(repo, "open_clip_config.json")
    if not isinstance(cached, str):
        require_online(constants.ENDPOINT, hub_id)
    try:
        return _build(hub_id, ModelId(hub_id, hub_id), device)
    except RuntimeError as err:
        raise WeightsUnavailable(f"cannot load {hub_id} from the hub ({err})") from err
