"""open_clip architectures: which config a `--model` names, whether a config can be built, and
registering a config with open_clip under a plain name.

A `--model` is an open_clip name (ViT-B-32), or a model-config JSON file, registered under its
file's stem; the bundled configs (retriever-tiny, in model_configs/) are registered once per
process. A config is checked before anything is built: the keys of an open_clip config, sizes
that are whole numbers, and at most MAX_PARAMETERS parameters. A config file in the shape of a
hub's open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": ...}) also gives the model's
preprocessing (`file_preprocess`). open_clip (and torch) is imported where it is used:
`estimated_parameters` serves `retriever models`, which builds nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from retriever.encoding.hf_sources import source_problem
from retriever.errors import BadSetting, ModelNotFound
from retriever.jsonfile import read_json

_BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"
# An architecture name (a checkpoint's "arch", a config file's stem) becomes a config file's name
# when registered with open_clip: a plain name as open_clip's own (ViT-B-32, coca_ViT-L-14), no
# path, no "..", no scheme ("hf-hub:", "local-dir:" make open_clip read elsewhere)
ARCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,99}")
# The largest model built: ~2x open_clip's largest config (ViT-e-14, ~4.6e9 parameters as
# `estimated_parameters` counts them), 36 GB in fp32. A config asking for more is refused before
# anything is allocated.
MAX_PARAMETERS = 9_000_000_000

@cache
def register_bundled_configs() -> None:
    """Make open_clip know the bundled architectures (retriever-tiny) by name. `load_model`
    calls it; call it before asking open_clip itself about them. Once per process."""
    import open_clip

    open_clip.add_model_config(_BUNDLED_CONFIGS)


def resolve_arch(model: str) -> tuple[str, Path | None]:
    """open_clip architecture name for `model`; config files are registered under their stem."""
    import open_clip

    if model.endswith(".json") or Path(model).is_file():
        path = Path(model).expanduser().resolve()
        if not path.is_file():
            raise ModelNotFound(f"model config {model} does not exist: pass an existing JSON file")
        cfg = _read_config(path)
        return register_arch(_plain_name(path.stem), cfg), path
    if model not in open_clip.list_models():
        raise ModelNotFound(
            f"unknown model {model!r}: pass an open_clip name (see `python -c "
            f"\"import open_clip; print(open_clip.list_models())\"`) or a model-config JSON path"
        )
    return model, None


def _read_config(path: Path) -> dict[str, Any]:
    cfg = _json_file(path)
    if isinstance(cfg, dict):
        cfg = cfg.get("model_cfg", cfg)
    problem = config_problem(cfg)
    if problem is not None:
        raise BadSetting("model", str(path), f"{problem}: pass an open_clip model config")
    return cfg


def file_preprocess(path: Path) -> dict[str, Any] | None:
    """The "preprocess_cfg" of a model-config file in open_clip_config.json's shape (mean, std,
    interpolation, resize_mode; the size is the model's), or None when it has none. BadSetting
    naming the file for values retriever cannot run (`PixelConfig`'s)."""
    from retriever.encoding.pixels import RESAMPLE, RESIZE_MODES

    data = _json_file(path)
    pp = data.get("preprocess_cfg") if isinstance(data, dict) and "model_cfg" in data else None
    if pp is None:
        return None
    problem = "is not a JSON object" if not isinstance(pp, dict) else None
    for key in ("mean", "std") if problem is None else ():
        value = pp.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                and (key == "mean" or v > 0) for v in value)):
            problem = f"{key} {str(value)[:40]!r} is not 3 numbers (std above 0)"
    if problem is None and pp.get("interpolation", "bicubic") not in RESAMPLE:
        problem = f"interpolation {str(pp['interpolation'])[:40]!r} is not one of {list(RESAMPLE)}"
    if problem is None and pp.get("resize_mode", "shortest") not in RESIZE_MODES:
        problem = f"resize_mode {str(pp['resize_mode'])[:40]!r} is not one of {list(RESIZE_MODES)}"
    if problem is not None:
        raise BadSetting("model", str(path), f"preprocess_cfg {problem}")
    return {k: pp[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pp}


def _json_file(path: Path) -> Any:
    try:
        return read_json(path)
    except OSError as err:
        raise ModelNotFound(f"model config {path} is not readable ({err})") from err


def config_problem(cfg: Any) -> str | None:
    """Why `cfg` cannot be built (not an open_clip model config, or too large), or None."""
    if not (isinstance(cfg, dict) and "embed_dim" in cfg and isinstance(cfg.get("vision_cfg"), dict)
            and isinstance(cfg.get("text_cfg"), dict)):
        return "lacks the embed_dim, vision_cfg and text_cfg of an open_clip model config"
    hf_problem = source_problem(cfg)
    if hf_problem is not None:
        return hf_problem
    try:
        n = estimated_parameters(cfg)
    except ValueError as err:
        return str(err)
    if n > MAX_PARAMETERS:
        return (f"asks for ~{n / 1e9:.1f} billion parameters ({4 * n / 1e9:.0f} GB in fp32), "
                f"over the {MAX_PARAMETERS / 1e9:.0f} billion retriever builds")
    return None


def estimated_parameters(cfg: dict[str, Any]) -> int:
    """Parameters an open_clip config asks for, from its sizes alone (within 3% for ViT-B-32,
    RN50 and ViT-L-14). A timm image tower or a Hugging Face text tower is named, not sized:
    it counts 0 (its size is the named model's). ValueError for a size that is not a number."""
    dim = _size(cfg, "embed_dim", 512)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    total = 0.0
    if not vision.get("timm_model_name"):
        width, side = _size(vision, "width", 768), _size(vision, "image_size", 224)
        if isinstance(vision.get("layers"), list | tuple):  # ModifiedResNet
            stages = _sizes(vision, "layers", 4)
            if len(stages) > 8:
                raise ValueError(f"layers has {len(stages)} stages, not 4")
            # stage i: bottlenecks of 17 (width 2^i)^2 each; then an attention pool
            total += sum(n * 17 * (width << i) ** 2 for i, n in enumerate(stages))
            embed = width * 32
            total += 4 * embed**2 + (side // 32) ** 2 * embed + embed * dim
        else:  # ViT: per layer 4 w^2 (attention) + 2 r w^2 (MLP); patches, positions
            patch = _size(vision, "patch_size", 16)
            total += _size(vision, "layers", 12) * width**2 * (4 + 2 * _ratio(vision))
            total += (side // patch) ** 2 * width + 3 * patch**2 * width + width * dim
    if not text.get("hf_model_name"):
        width = _size(text, "width", 512)
        total += (_size(text, "vocab_size", 49408) + _size(text, "context_length", 77)) * width
        total += _size(text, "layers", 12) * width**2 * (4 + 2 * _ratio(text)) + width * dim
    return int(total)


def _size(cfg: dict[str, Any], key: str, default: int) -> int:
    """cfg[key] as a positive int (the largest, for an [h, w] pair)."""
    return max(_sizes(cfg, key, default))


def _sizes(cfg: dict[str, Any], key: str, default: int) -> list[int]:
    """cfg[key], one size or a list of them, as positive ints up to 10^12 (past that, the
    arithmetic on them is what would take the time)."""
    value = cfg.get(key, default)
    values = list(value) if isinstance(value, list | tuple) and value else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 10**12
               for v in values):
        raise ValueError(f"{key} {str(value)[:40]!r} is not a whole number from 1 to 10^12")
    return values


def _ratio(cfg: dict[str, Any]) -> float:
    ratio = cfg.get("mlp_ratio", 4.0)
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio < 1e6:
        raise ValueError(f"mlp_ratio {str(ratio)[:40]!r} is not a positive number")
    return float(ratio)


def _plain_name(stem: str) -> str:
    """A config file's stem as an architecture name (ARCH_NAME): other characters become "-"."""
    name = re.sub(r"[^A-Za-z0-9_+-]+", "-", stem).strip("-_+")[:100]
    return name or "config"


def register_arch(arch: str, cfg: dict[str, Any]) -> str:
    """Make `cfg` known to open_clip as `arch` (a differing built-in of that name is kept).
    `arch` must be a plain name (ARCH_NAME): it names the file open_clip reads the config from,
    which is written in a temporary folder of retriever's own."""
    if not ARCH_NAME.fullmatch(arch):
        raise ValueError(f"{arch[:40]!r} is not a plain architecture name")
    import open_clip

    known = open_clip.get_model_config(arch)
    if known == cfg:
        return arch
    if known is not None:
        digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
        arch = f"{arch[:90]}-{digest}"
        if open_clip.get_model_config(arch) == cfg:
            return arch
    # open_clip reads a config from a file; it keeps what it read after the file is gone
    with tempfile.TemporaryDirectory(prefix="retriever-config-") as folder:
        target = Path(folder) / f"{arch}.json"
        target.write_text(json.dumps(cfg))
        open_clip.add_model_config(target)
    return arch
