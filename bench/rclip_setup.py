"""rclip 3.3.0 beside retriever, offline, on the very same (random) weights.

    python -m bench.rclip_setup      # prints $RCLIP_DATADIR

rclip runs from its own venv (bench/.rclip-venv, `pip install rclip==3.3.0`). It downloads its
ONNX model from the Hugging Face hub on first use; with no network here, its data dir
(bench/.work/rclip-data, passed as $RCLIP_DATADIR) is filled in advance with what that download
would leave there, made from a random-weight open_clip ViT-B-32-256 (rclip's architecture):

    vitb32-256-random.pt     the model, a retriever checkpoint: our side loads it with
                             --model ViT-B-32-256 --pretrained bench/.work/vitb32-256-random.pt
    rclip-data/ViT-B-32-256-datacomp_s34b_b86k/{visual,textual}.onnx
                             the same weights, exported the way rclip's own converter does
    rclip-data/tokenizer/bpe_simple_vocab_16e6.txt.gz   open_clip's BPE vocabulary

Random weights make rankings meaningless, but every multiply-add is the one the real weights
would cost, which is all a speed comparison needs. Work already done is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.photos import WORK

RCLIP_VERSION = "3.3.0"
VENV = Path(__file__).with_name(".rclip-venv")
DATADIR = WORK / "rclip-data"
CHECKPOINT = WORK / "vitb32-256-random.pt"
ARCH = "ViT-B-32-256"
MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"  # rclip's model_download.MODEL_SUBDIR
IMAGE_SIZE = 256
OPSET = 18  # what rclip's converter exports with
NOTICE = ("This file stands in for the file of the same name in rclip's model repository "
          "(yurijmikhalevich/rclip-models) in an offline benchmark: the ONNX models beside it "
          "are a random-weight open_clip ViT-B-32-256 exported by bench/rclip_setup.py.\n")
NOTICE_FILES = ("LICENSE", "OPENAI-CLIP-MIT.txt", "README.md", "THIRD_PARTY_NOTICES.md")


def rclip_bin() -> Path:
    return VENV / "bin" / "rclip"


def rclip_python() -> Path:
    return VENV / "bin" / "python"


def rclip_env() -> dict[str, str]:
    """The environment every rclip call runs with: our data dir, and never the hub."""
    return {**os.environ, "RCLIP_DATADIR": str(DATADIR.resolve()), "HF_HUB_OFFLINE": "1"}


def ensure_venv() -> Path:
    """bench/.rclip-venv with rclip==RCLIP_VERSION; created (pip) only when missing."""
    if rclip_bin().is_file() and _installed_version() == RCLIP_VERSION:
        return VENV
    python = shutil.which("python3") or sys.executable
    print(f"creating {VENV} (pip install rclip=={RCLIP_VERSION})", file=sys.stderr)
    subprocess.run([python, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet",
                    f"rclip=={RCLIP_VERSION}"], check=True)
    return VENV


def _installed_version() -> str | None:
    found = subprocess.run(
        [str(rclip_python()), "-c", "import importlib.metadata as m; print(m.version('rclip'))"],
        capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def ensure_checkpoint() -> Path:
    """The random-weight ViT-B-32-256 (seeded) as a retriever checkpoint."""
    if CHECKPOINT.is_file():
        return CHECKPOINT
    import torch

    from retriever.encoding.checkpoints import save_checkpoint
    from retriever.encoding.models import ModelSpec, load_model

    CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(CHECKPOINT, load_model(ModelSpec(ARCH, "none"), torch.device("cpu")))
    return CHECKPOINT


def onnx_paths() -> tuple[Path, Path]:
    folder = DATADIR / MODEL_SUBDIR
    return folder / "visual.onnx", folder / "textual.onnx"


def ensure_onnx() -> None:
    """visual.onnx and textual.onnx from the checkpoint, unless newer than it already."""
    visual, textual = onnx_paths()
    built = CHECKPOINT.stat().st_mtime
    if all(p.is_file() and p.stat().st_mtime > built for p in (visual, textual)):
        return
    import torch

    from retriever.encoding.models import ModelSpec, load_model

    model = load_model(ModelSpec(ARCH, str(CHECKPOINT.resolve())), torch.device("cpu")).model
    visual.parent.mkdir(parents=True, exist_ok=True)
    visual_tower, text_tower = _towers(model)
    _export(visual_tower, torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE), visual)
    _export(text_tower, torch.zeros(1, 77, dtype=torch.long), textual)


def _export(module, dummy, path: Path) -> None:
    """As rclip's converter does: legacy exporter, opset 18, dynamic batch."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    # with autograd on, nn.MultiheadAttention takes its plain path, not the fused kernel the
    # legacy exporter cannot translate (aten::_native_multi_head_attention)
    torch.onnx.export(module.eval(), (dummy,), str(tmp), dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    tmp.replace(path)


def _towers(model):
    """The two modules rclip's converter exports: visual(x) and encode_text(x), unnormalised."""
    import torch

    class Visual(torch.nn.Module):  # (n, 3, 256, 256) float32 -> (n, 512)
        def __init__(self) -> None:
            super().__init__()
            self.visual = model.visual

        def forward(self, x):
            return self.visual(x)

    class Textual(torch.nn.Module):  # (n, 77) int64 tokens -> (n, 512)
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.encode_text(x)

    return Visual(), Textual()


def ensure_data_files() -> None:
    """The tokenizer vocabulary and the repository's notice files."""
    vocab = DATADIR / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    if not vocab.is_file():
        vocab.parent.mkdir(parents=True, exist_ok=True)
        open_clip = importlib.util.find_spec("open_clip")  # its folder, without importing torch
        assert open_clip is not None and open_clip.origin is not None, "open_clip is missing"
        shutil.copyfile(Path(open_clip.origin).parent / vocab.name, vocab)
    for name in NOTICE_FILES:
        if not (DATADIR / name).is_file():
            (DATADIR / name).write_text(NOTICE)


def reset_rclip_db() -> None:
    """rclip keeps its index in $RCLIP_DATADIR/db.sqlite3 (plus SQLite's side files)."""
    for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "db.sqlite3-journal"):
        (DATADIR / name).unlink(missing_ok=True)


def prepare() -> Path:
    """Everything above; returns $RCLIP_DATADIR."""
    ensure_venv()
    ensure_checkpoint()
    ensure_onnx()
    ensure_data_files()
    return DATADIR


if __name__ == "__main__":
    print(prepare().resolve())
