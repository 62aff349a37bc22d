"""Zero-shot classification gives the numbers of CLIP_benchmark's protocol.

`clip_benchmark_classification` below is CLIP_benchmark's zero-shot classification
(clip_benchmark/metrics/zeroshot_classification.py, 1.6.2) written out plainly and independently
of retriever.training.classification: its own walk of the folder, per class the prompt embeddings
normalised, averaged and renormalised, logits = 100 x image features @ classifier, top-k by
torch.topk, mean per-class recall as scikit-learn's balanced accuracy of the argmax.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.models import ModelSpec, load_model
from retriever.encoding.prompts import DEFAULT_TEMPLATES
from retriever.errors import BadSetting, DatasetError
from retriever.media.images import open_image
from retriever.training.classification import (
    classification_metrics,
    evaluate_classes,
    read_class_folder,
)
from retriever.training.synthetic import COLOURS

from .helpers import write_colour_folders


def clip_benchmark_classification(encoder, root: Path, classnames: list[str],
                                  templates: list[str]) -> dict:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    samples = [(path, c) for c, folder in enumerate(folders) for path in sorted(folder.iterdir())]
    weights = []
    for classname in classnames:
        texts = [template.replace("{}", classname) for template in templates]
        class_embeddings = torch.from_numpy(encoder.encode_texts(texts))
        class_embedding = F.normalize(class_embeddings, dim=-1).mean(dim=0)
        class_embedding /= class_embedding.norm()
        weights.append(class_embedding)
    classifier = torch.stack(weights, dim=1)  # (dim, classes)
    images = torch.from_numpy(encoder.encode_images([open_image(p) for p, _ in samples]))
    logits = 100.0 * F.normalize(images, dim=-1) @ classifier  # (images, classes)
    target = torch.tensor([c for _, c in samples])
    pred = logits.topk(5, 1, True, True)[1].t()  # (5, images)
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    acc1, acc5 = (float(correct[:k].reshape(-1).float().sum()) / len(target) for k in (1, 5))
    top1 = logits.argmax(dim=1)
    recalls = [int((top1[target == c] == c).sum()) / int((target == c).sum())
               for c in target.unique()]  # balanced_accuracy_score: per class, then the mean
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": sum(recalls) / len(recalls)}


@pytest.fixture(scope="module")
def shapes_encoder(shapes_checkpoint) -> ClipEncoder:
    return ClipEncoder(load_model(ModelSpec(pretrained=str(shapes_checkpoint))))


@pytest.mark.parametrize("named_by", ["folders", "classnames.txt"])
def test_classification_equals_clip_benchmarks_protocol(tmp_path, shapes_encoder, named_by):
    counts = dict(zip(COLOURS, [3, 9, 5, 7, 4, 6], strict=True))
    root = write_colour_folders(tmp_path / "colours", counts)
    names = sorted(COLOURS)  # ImageFolder's classes: the folders in sorted order
    if named_by == "classnames.txt":  # folders named by number, names from the file
        names = list(COLOURS)
        for i, colour in enumerate(COLOURS):
            (root / colour).rename(root / f"class{i:02d}")
        (root / "classnames.txt").write_text("\n".join(names) + "\n")
    expected = clip_benchmark_classification(shapes_encoder, root, names, list(DEFAULT_TEMPLATES))

    got = evaluate_classes(shapes_encoder, read_class_folder(root))

    assert {k: got[k] for k in expected} == expected  # exactly: the same counts
    assert (got["images"], got["classes"], got["templates"]) == (34, 6, 5)
    assert 1 / 6 < got["acc1"] < 1  # the model knows colours, not perfectly: not trivial
    assert got["mean_per_class_recall"] != got["acc1"]  # unbalanced classes tell them apart


def test_templates_are_what_is_averaged(tmp_path, shapes_encoder):
    root = write_colour_folders(tmp_path / "colours", dict.fromkeys(COLOURS, 4))
    templates = ["a {} circle on the left", "{} on the right"]
    expected = clip_benchmark_classification(shapes_encoder, root, sorted(COLOURS), templates)

    got = evaluate_classes(shapes_encoder, read_class_folder(root), templates)

    assert {k: got[k] for k in expected} == expected
    assert got["templates"] == 2


def test_unreadable_images_are_skipped_and_counted(tmp_path, tiny_encoder):
    root = write_colour_folders(tmp_path / "c", {"red": 2, "green": 2})
    (root / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "green" / "notes.txt").write_text("not an image")  # not an image file: not listed
    (root / ".hidden").mkdir()  # not a class

    folder = read_class_folder(root)
    got = evaluate_classes(tiny_encoder, folder)

    assert folder.classes == ("green", "red")  # sorted folder names
    assert (len(folder.images), got["images"], got["unreadable"]) == (5, 4, 1)
    assert got["acc5"] is None  # fewer than 5 classes: CLIP_benchmark reports NaN


def test_ties_rank_as_in_retrieval():
    """Two classes with the same vector: topk puts the first ahead, strict counts the tie
    against every image."""
    images = np.eye(3, dtype=np.float32)
    classes = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)  # 0 and 1 tie
    labels = np.array([0, 1, 2])
    topk = classification_metrics(images, labels, classes)
    strict = classification_metrics(images, labels, classes, ties="strict")
    assert topk["acc1"] == pytest.approx(1 / 3)  # image 0 is right; 1 loses to 0; 2 is wrong
    assert strict["acc1"] == 0.0
    assert topk["mean_per_class_recall"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(("layout", "message"), [
    ({}, "0 class folders"),
    ({"only": 1}, "1 class folders"),
    ({"a": 0, "b": 0}, "no images"),
])
def test_a_tree_that_is_not_an_image_folder_is_a_dataset_error(tmp_path, layout, message):
    root = tmp_path / "tree"
    root.mkdir()
    for name, n in layout.items():
        (root / name).mkdir()
        if n:
            write_colour_folders(tmp_path / "src", {"red": n})
            for p in (tmp_path / "src" / "red").iterdir():
                p.rename(root / name / p.name)
    with pytest.raises(DatasetError, match=message):
        read_class_folder(root)


def test_classnames_must_name_every_folder(tmp_path):
    root = write_colour_folders(tmp_path / "c", {"red": 1, "green": 1})
    (root / "classnames.txt").write_text("only one\n")
    with pytest.raises(DatasetError, match="names 1 classes but .* has 2 class folders"):
        read_class_folder(root)


def test_a_template_without_a_slot_is_refused(tmp_path, tiny_encoder):
    root = write_colour_folders(tmp_path / "c", {"red": 1, "green": 1})
    with pytest.raises(BadSetting, match=re.escape("template 'a photo': needs one {}")):
        evaluate_classes(tiny_encoder, read_class_folder(root), ["a photo"])


def test_cli_eval_classification_json_and_table(tmp_path, cli, shapes_checkpoint):
    root = write_colour_folders(tmp_path / "colours", dict.fromkeys(COLOURS, 2))

    out = cli("eval", root, "--task", "classification", "--pretrained", shapes_checkpoint,
              "--template", "a {} shape", "--template", "a photo of {}.", "--json")
    table = cli("eval", root, "--task", "classification", "--pretrained", shapes_checkpoint)

    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert (got["images"], got["classes"], got["templates"], got["ties"]) == (12, 6, 2, "topk")
    assert set(got) >= {"acc1", "acc5", "mean_per_class_recall"}
    assert table.exit_code == 0, table.output
    assert "top-1" in table.stdout and "mean per-class recall" in table.stdout


def test_cli_eval_names_a_bad_task(tmp_path, cli):
    got = cli("eval", tmp_path, "--task", "detection", "--model", "retriever-tiny",
              "--pretrained", "none")
    assert got.exit_code == 2
    assert "--task detection" in got.stderr


def test_train_scores_val_classes_beside_recall(tmp_path, cli, one_torch_thread):
    from retriever.training.synthetic import write_captioned_images

    scenes = tmp_path / "scenes"
    write_captioned_images(scenes, 40, seed=1)
    classes = write_colour_folders(tmp_path / "colours", dict.fromkeys(COLOURS, 2))
    out = tmp_path / "m.pt"

    got = cli("train", scenes, "--out", out, "--model", "retriever-tiny", "--pretrained", "none",
              "--epochs", "2", "--batch-size", "8", "--val-every", "2", "--val-classes", classes)

    assert got.exit_code == 0, got.output
    with (tmp_path / "m.curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    validated = [int(r["step"]) for r in rows if r["val_cls_acc1"]]
    # 36 training images, 5 steps per epoch: every 2 steps and at epoch ends, recall beside it
    assert validated == [int(r["step"]) for r in rows if r["val_t2i_R@1"]] == [0, 2, 4, 5, 6, 8,
                                                                                 10]
    assert all(r["val_cls_acc5"] and r["val_cls_mean_per_class_recall"] for r in rows
               if r["val_cls_acc1"])
    log = " ".join(got.stderr.split())  # the console may wrap long lines
    assert log.count("classification top-1") == len(validated)  # 3 epoch lines, 4 step lines
    assert re.search(r"epoch 2/2, loss \S+, val text->image R@1 .* classification top-1", log)
    assert "classification" in got.stdout and "top-1" in got.stdout  # the before/after table
    # the last validation is the trained checkpoint's accuracy, as `eval` measures it
    final = evaluate_classes(ClipEncoder(load_model(ModelSpec(pretrained=str(out)))),
                             read_class_folder(classes))
    assert float(rows[-1]["val_cls_acc1"]) == final["acc1"]
    assert float(rows[-1]["val_cls_mean_per_class_recall"]) == final["mean_per_class_recall"]
