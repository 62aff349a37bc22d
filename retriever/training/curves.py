"""Training curves: a CSV with one row per optimizer step (and one before training), and a PNG
plot of it, written next to the checkpoint.

CSV columns:
  step          optimizer steps done (0: before training)
  epoch         the epoch the step belongs to
  pairs         pairs trained on so far, all processes together
  loss          the step's loss over its whole batch
  loss_<term>   each term of the objective (losses.Objective.terms), summing to `loss`
  temperature   1 / exp(logit_scale) after the step: CLIP's softmax temperature
  lr            the learning rate the step used
  val_<dir>_R@<k>  held-out recall (dir t2i = text->image, i2t = image->text; k = 1, 5, 10),
                on the rows of steps after which validation ran; empty elsewhere
  val_cls_acc1, val_cls_acc5, val_cls_mean_per_class_recall
                zero-shot classification of --val-classes (retriever.training.classification),
                on the same rows; only in the runs given --val-classes
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from retriever.atomic import replacing
from retriever.training.classification import Accuracy
from retriever.training.evaluation import KS, recalls

SHORT = {"text_to_image": "t2i", "image_to_text": "i2t"}  # direction: its name in a column
VAL_COLUMNS = [f"val_{short}_R@{k}" for short in SHORT.values() for k in KS]
CLASS_COLUMNS = ["val_cls_acc1", "val_cls_acc5", "val_cls_mean_per_class_recall"]
# Drawing the PNG takes ~0.3 s; during a run it is redrawn at most this often (the CSV at every
# save point), so short epochs do not spend their time plotting.
PLOT_EVERY_S = 60.0


class Curve:
    def __init__(self, csv_path: Path, png_path: Path, terms: tuple[str, ...],
                 rows: list[dict[str, Any]] | None = None, classification: bool = False) -> None:
        self.csv_path, self.png_path = csv_path, png_path
        self.val_columns = [*VAL_COLUMNS, *(CLASS_COLUMNS if classification else [])]
        self.columns = ["step", "epoch", "pairs", "loss", *(f"loss_{t}" for t in terms),
                        "temperature", "lr", *self.val_columns]
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._plotted_at = time.monotonic()  # of the last PNG; the first comes a while in

    def add_step(self, step: int, epoch: int, pairs: int, loss: float, terms: dict[str, float],
                 temperature: float, lr: float) -> None:
        self.rows.append({"step": step, "epoch": epoch, "pairs": pairs, "loss": loss,
                          **{f"loss_{k}": v for k, v in terms.items()},
                          "temperature": temperature, "lr": lr})

    def add_validation(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        """Put held-out recall (and classification accuracy) on the row of `step` (a new row
        if that step has none)."""
        if not metrics:
            return
        if not self.rows or self.rows[-1]["step"] != step:
            self.rows.append({"step": step, "epoch": epoch})
        row = self.rows[-1]
        if "text_to_image" in metrics:
            for direction, recall in recalls(metrics).items():
                for k, value in recall.at.items():
                    row[f"val_{SHORT[direction]}_R@{k}"] = value
        if "classification" in metrics:
            accuracy = Accuracy.from_json(metrics["classification"]).to_json()
            row.update({f"val_cls_{name}": value for name, value in accuracy.items()})

    def write(self, final: bool = False) -> None:
        """Rewrite the CSV, and the PNG when `final` or PLOT_EVERY_S after the last one.

        Atomically: a reader never sees half a file."""
        text = io.StringIO()
        writer = csv.DictWriter(text, self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        with replacing(self.csv_path) as tmp:
            Path(tmp).write_text(text.getvalue())
        if final or time.monotonic() - self._plotted_at >= PLOT_EVERY_S:
            with replacing(self.png_path) as tmp:
                self._plot(Path(tmp))
            self._plotted_at = time.monotonic()

    def _series(self, column: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[column]) for r in self.rows if r.get(column) is not None]
        return [s for s, _ in points], [float(v) for _, v in points]

    def _plot(self, path: Path) -> None:
        # the object API, not pyplot: no global figure state, no GUI backend
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(11, 7), layout="constrained")
        loss, lr, temperature, recall = figure.subplots(2, 2, sharex=True).flat
        for column in ["loss", *(c for c in self.columns if c.startswith("loss_"))]:
            loss.plot(*self._series(column), label=column, linewidth=1)
        lr.plot(*self._series("lr"), color="tab:green")
        temperature.plot(*self._series("temperature"), color="tab:purple")
        for column in self.val_columns:
            recall.plot(*self._series(column), marker="o", markersize=3, label=column[4:])
        for axes, title in ((loss, "training loss"), (lr, "learning rate"),
                            (temperature, "temperature 1/exp(logit_scale)"),
                            (recall, "held-out recall and accuracy")):
            axes.set_title(title)
            axes.grid(alpha=0.3)
        loss.legend(fontsize="small")
        if any(self._series(c)[0] for c in self.val_columns):
            recall.legend(fontsize="small", ncols=2)
        for axes in (temperature, recall):
            axes.set_xlabel("step")
        FigureCanvasAgg(figure).print_png(str(path))
