"""Figures of runs (the paper's analyses, docs/ALGORITHM.md section 9): PNG files drawn with matplotlib's Agg
canvas (no screen needed), and the autoencoder's reconstructions drawn pixel for pixel with PIL.
The command that draws them from run directories is `python -m ccl.figures` (ccl/figures/);
`main_ae.py` draws `reconstructions.png` itself at the end of a run (`save_reconstructions`).

What the figures are drawn from (read by `ccl.run_dir.RunDir`):
- `RUN_DIR/analysis.jsonl`: one JSON object per line, one line per analysed epoch (0 = before
  training, or per measured step of `analysis_steps`): {"epoch": E (null at a step that ends no
  epoch), "step": S (the global step; absent in records written before analysis_steps),
  "layers": ["layer1", ...], "cka": [[...]] ((L+1) x (L+1), rows a_0 = input..a_L, columns
  b_0..b_L = target), "weight_cosine": [...] (L), "grad_angle_deg": [...] (L)}; null where a value
  is undefined. The record of `ccl.measures.analyse` with its epoch and step.
- `RUN_DIR/metrics.jsonl`: the trainer's rows, of which `epoch`, `train_loss` and either
  `val_loss` and `val_acc` (classification) or `val_mse` (autoencoder), and where the rule
  logs them (CCL), its loss terms `train_loss_output`, `train_loss_pair0`, ...
- `RUN_DIR/best.pt`: a state dict with `layer1.fwd.weight` of shape (out, in, kh, kw), in = 1 or 3.
- `RUN_DIR/config.yaml` (optional): titles read `<config folder>/<config name>, seed S` from its
  `run: yaml:` path and `training: seed:`; without it, the directory's name.
- `RUN_DIR/results.json` (optional): `best_epoch`, for the titles of kernels and reconstructions.
- GRID_CSV: a header and one row per (lr_F, lr_B) cell, columns
      lr_F, lr_B   the forward and feedback learning rates (numbers)
      mean, std    mean and standard deviation over the cell's seeds of the test accuracy in %
                   (std empty when n < 2, both empty when n = 0)
      n            the number of seeds behind the cell (an integer)
  in any order; other columns are ignored. Cells missing from the CSV, or with n = 0, are grey.

Bad input (a missing file or column, a record without a key) is a ConfigError: one line naming
the problem, exit code 2. The plotting functions (`*_figure`) take plain data and return a
matplotlib Figure, so other code can draw them without files.
"""
from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from ccl.run_dir import BEST, RECONSTRUCTIONS, RunDir
from utils.data.loader import BatchLoader
from utils.data.recipes import Data
from utils.errors import ConfigError, UserError
from utils.io import write_stream

GRID_COLUMNS = ("lr_F", "lr_B", "mean", "std", "n")
FIRST_LAYER_WEIGHT = "layer1.fwd.weight"
DPI = 100
LINE_STYLES = ("-", "--", ":", "-.")
MISSING_COLOUR = "lightgrey"
TITLE_CHARACTERS_PER_INCH = 11  # what fits of a 10-point title
KERNEL_COLUMNS = 8


# --- titles and weights of runs ---------------------------------------------------------------
def run_title(run_dir: Path) -> str:
    """'<config folder>/<config name>, seed S' from the run's config.yaml, else its directory name."""
    config, seed = RunDir(run_dir).config_name_and_seed()
    return config if seed is None else f"{config}, seed {seed}"


def run_titles(run_dirs: Sequence[Path]) -> list[str]:
    """`run_title` of each run; runs that would share one (grid cells of one config and seed)
    are told apart by the config values in which they differ, e.g. 'lr_B 0.4'."""
    titles = [run_title(run) for run in run_dirs]
    for title in set(titles):
        alike = [index for index, other in enumerate(titles) if other == title]
        if len(alike) < 2:
            continue
        values = [_saved_values(run_dirs[index]) for index in alike]
        differing = [key for key in values[0] if len({repr(value.get(key)) for value in values}) > 1]
        for index, value in zip(alike, values):
            titles[index] += "".join(f", {key} {value.get(key)}" for key in differing)
    return titles


def _saved_values(run_dir: Path) -> dict:
    """The run's saved config values; empty where unreadable (a title must not fail)."""
    try:
        return RunDir(run_dir).saved_config()[0].as_dict()
    except UserError:
        return {}


def best_epoch_or_none(run_dir: Path) -> int | None:
    """The epoch of the run's best.pt for a title, None where results.json cannot say."""
    try:
        return RunDir(run_dir).best_epoch()
    except UserError:
        return None


def runs_title(run_dirs: Sequence[Path]) -> str:
    """One run's title, or 'CONFIG, mean of N runs (seeds S1, S2, ...)' for several."""
    if len(run_dirs) == 1:
        return run_title(run_dirs[0])
    named = [RunDir(run).config_name_and_seed() for run in run_dirs]
    configs = ", ".join(dict.fromkeys(config for config, _ in named))
    seeds = ", ".join(str(seed) for _, seed in named if seed is not None)
    return f"{configs}, mean of {len(run_dirs)} runs" + (f" (seeds {seeds})" if seeds else "")


def first_layer_kernels(run_dir: Path) -> torch.Tensor:
    """`layer1.fwd.weight` of the run's best.pt: (out, in, kh, kw) with in = 1 or 3."""
    path = Path(run_dir) / BEST
    weight = RunDir(run_dir).best_weights().get(FIRST_LAYER_WEIGHT)
    if weight is None:
        raise ConfigError(f"{path}: no {FIRST_LAYER_WEIGHT}")
    if weight.dim() != 4 or weight.shape[1] not in (1, 3):
        raise ConfigError(f"{path}: {FIRST_LAYER_WEIGHT} has shape {tuple(weight.shape)}; kernels "
                          f"draws conv kernels (out, in, kh, kw) of greyscale or RGB input (in = 1 or 3)")
    return weight.float()


def read_grid(path: Path) -> list[dict]:
    """The cells of a grid CSV (module docstring): lr_F, lr_B, mean, std (NaN when empty), n."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file")
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [column for column in GRID_COLUMNS if column not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"{path}: no column {', '.join(missing)} (a grid CSV has the columns "
                              f"{', '.join(GRID_COLUMNS)})")
        cells = [_grid_cell(row, path, number) for number, row in enumerate(reader, start=2)]
    if not cells:
        raise ConfigError(f"{path}: no rows")
    coordinates = [(cell["lr_F"], cell["lr_B"]) for cell in cells]
    if len(set(coordinates)) != len(coordinates):
        raise ConfigError(f"{path}: a (lr_F, lr_B) cell appears on more than one row")
    return cells


def _grid_cell(row: dict, path: Path, number: int) -> dict:
    try:
        return {"lr_F": float(row["lr_F"]), "lr_B": float(row["lr_B"]),
                "mean": float(row["mean"] or "nan"), "std": float(row["std"] or "nan"),
                "n": int(row["n"])}
    except (TypeError, ValueError):
        raise ConfigError(f"{path}, line {number}: lr_F, lr_B, mean, std must be numbers and n an "
                          f"integer") from None


# --- drawing -------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _suptitle(figure: Figure, text: str) -> None:
    width = int(figure.get_figwidth() * TITLE_CHARACTERS_PER_INCH)
    figure.suptitle("\n".join(textwrap.wrap(text, width)), fontsize=10)


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _text_colour(image, value: float) -> str:
    """Black on a light cell, white on a dark one (by the cell colour's luma)."""
    red, green, blue, _ = image.cmap(image.norm(value))
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def save_png(figure: Figure, path: Path) -> Path:
    """The figure as a PNG of at most 256 colours (a third of the RGBA file's size, and the
    committed figures stay small; a heatmap's colour map has 256 colours itself)."""
    figure.canvas.draw()
    picture = Image.fromarray(np.asarray(figure.canvas.buffer_rgba())).convert("RGB")
    picture = picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    write_stream(path, lambda stream: picture.save(stream, format="PNG", optimize=True))
    return Path(path)


def _nan_for_null(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _colours(count: int) -> list:
    """`count` distinct colours: tab10's while they last, else spread over viridis."""
    colour_map = matplotlib.colormaps["tab10" if count <= 10 else "viridis"]
    return [colour_map(i if count <= 10 else i / max(count - 1, 1)) for i in range(count)]


def _line_styles(count: int) -> list[str]:
    return [LINE_STYLES[index % len(LINE_STYLES)] for index in range(count)]


def _epoch_span(epochs) -> str:
    first, last = min(epochs), max(epochs)
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def cka_labels(layers: Sequence[str]) -> tuple[list[str], list[str]]:
    """Row and column labels of the CKA matrix: a_0 (the input) .. a_L, b_0 .. b_L (the target),
    each named after the layer whose map made it."""
    rows = ["a0 input", *[f"a{i} {name}" for i, name in enumerate(layers, start=1)]]
    columns = [*[f"b{j} {name}" for j, name in enumerate(layers)], f"b{len(layers)} target"]
    return rows, columns


def _heatmap(ax, matrix: np.ndarray, colour_map, limits: tuple[float, float], layers: Sequence[str],
             number_format: str | None):
    """The matrix, with its values in `number_format` (None: colours only), the labels of cka_labels, and a box around each cell of the
    main diagonal: a_l against b_l, the pairs the losses compare."""
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=colour_map, vmin=limits[0], vmax=limits[1])
    if number_format and len(matrix) <= 8:  # the MLP's and CNN's 7 x 7; the autoencoder's 9 x 9 would be crowded
        for (i, j), value in np.ndenumerate(matrix):
            if math.isfinite(value):
                shade = image.norm(value)
                dark = shade < 0.4 if limits[0] == 0 else abs(shade - 0.5) > 0.35
                ax.text(j, i, number_format.format(value), ha="center", va="center", fontsize=6,
                        color="white" if dark else "black")
    for index in range(len(matrix)):
        ax.add_patch(Rectangle((index - 0.5, index - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2))
    rows, columns = cka_labels(layers)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    return image


def cka_figure(points: Sequence[tuple[str, np.ndarray]], layers: Sequence[str], title: str) -> Figure:
    """Top row: one CKA heatmap per (label, matrix), rows a_0 (the input) .. a_L, columns b_0 ..
    b_L (the target), grey where undefined, the compared pairs (the main diagonal) boxed in red.
    With two or more points, a bottom row: the change of each matrix from the one before it
    (colours only, as the paper's bottom row)."""
    count, rows = len(points), 2 if len(points) > 1 else 1
    figure = _figure(0.8 + 3.0 * count, 0.4 + 3.4 * rows)
    axes = figure.subplots(rows, count, squeeze=False)
    viridis = matplotlib.colormaps["viridis"].with_extremes(bad=MISSING_COLOUR)
    for ax, (label, matrix) in zip(axes[0], points):
        image = _heatmap(ax, matrix, viridis, (0, 1), layers, "{:.2f}")
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel("forward activation a", fontsize=8)
    figure.colorbar(image, ax=list(axes[0]), shrink=0.8, label="linear CKA")
    if rows == 2:
        changes = [(f"{label} - {before}", matrix - previous)
                   for (before, previous), (label, matrix) in zip(points, points[1:])]
        limit = max((np.nanmax(np.abs(change)) for _, change in changes if np.isfinite(change).any()),
                    default=1.0) or 1.0
        diverging = matplotlib.colormaps["RdBu_r"].with_extremes(bad=MISSING_COLOUR)
        axes[1][0].axis("off")
        for ax, (label, change) in zip(axes[1][1:], changes):
            image = _heatmap(ax, change, diverging, (-limit, limit), layers, None)
            ax.set_title(f"change: {label}", fontsize=9)
        axes[1][1].set_ylabel("forward activation a", fontsize=8)
        figure.colorbar(image, ax=list(axes[1]), shrink=0.8, label="change of CKA")
    for ax in axes[-1]:
        ax.set_xlabel("feedback activation b", fontsize=8)
    _suptitle(figure, f"{title}: linear CKA of forward vs feedback activations (red boxes: a_l vs "
                      f"b_l, the pairs the losses compare)")
    return figure


def mean_cka(records: Sequence[dict]) -> np.ndarray:
    """The mean over records (runs) of their CKA matrices; undefined where any is."""
    return np.mean([[_nan_for_null(row) for row in record["cka"]] for record in records], axis=0)


def alignment_figure(runs: Sequence[tuple[str, Sequence[dict]]]) -> Figure:
    """Per layer over epochs: the cosine of the forward and (transposed) feedback weights, and
    the angle of the rule's gradient to backprop's. One colour per layer, one line style per run."""
    layer_names = list(dict.fromkeys(name for _, records in runs for r in records for name in r["layers"]))
    colours = dict(zip(layer_names, _colours(len(layer_names))))
    figure = _figure(10, 4.6)
    cosine_ax, angle_ax = figure.subplots(1, 2)
    styles = _line_styles(len(runs))
    for (_, records), style in zip(runs, styles):
        epochs = [record["epoch"] for record in records]
        for index, name in enumerate(records[0]["layers"]):
            for ax, key in ((cosine_ax, "weight_cosine"), (angle_ax, "grad_angle_deg")):
                values = _nan_for_null([record[key][index] for record in records])
                ax.plot(epochs, values, linestyle=style, color=colours[name], marker=".", markersize=3)
    cosine_ax.set_ylabel("cosine(forward weight, feedback weight transposed)")
    angle_ax.set_ylabel("angle to backprop's gradient (degrees)")
    for ax in (cosine_ax, angle_ax):
        _epoch_axis(ax)
    layer_handles = [Line2D([], [], color=colours[name], label=name) for name in layer_names]
    run_handles = [Line2D([], [], color="black", linestyle=style, label=title)
                   for (title, _), style in zip(runs, styles)]
    handles = layer_handles + run_handles
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=7)
    epochs = [record["epoch"] for _, records in runs for record in records]
    _suptitle(figure, f"{'; '.join(title for title, _ in runs)}: weight and gradient alignment, "
                      f"{_epoch_span(epochs)}")
    return figure


def kernel_mosaic(weight: torch.Tensor, count: int) -> np.ndarray:
    """The first `count` kernels of a conv weight (out, in, kh, kw) as one RGB image: each kernel
    scaled to [0, 1] on its own (a constant kernel is mid-grey), grey when in = 1, a white line
    between kernels, `KERNEL_COLUMNS` per row."""
    kernels = weight[:count].double()
    low = kernels.amin(dim=(1, 2, 3), keepdim=True)
    span = kernels.amax(dim=(1, 2, 3), keepdim=True) - low
    varies = span > 0
    scaled = torch.where(varies, (kernels - low) / torch.where(varies, span, 1.0), 0.5)
    scaled = scaled.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()  # (k, kh, kw, RGB)
    rows = math.ceil(len(scaled) / KERNEL_COLUMNS)
    height, width = scaled.shape[1:3]
    mosaic = np.ones((rows * (height + 1) + 1, KERNEL_COLUMNS * (width + 1) + 1, 3))
    for index, kernel in enumerate(scaled):
        top, left = 1 + (index // KERNEL_COLUMNS) * (height + 1), 1 + (index % KERNEL_COLUMNS) * (width + 1)
        mosaic[top:top + height, left:left + width] = kernel
    return mosaic


def kernels_figure(panels: Sequence[tuple[str, torch.Tensor]], count: int = 64) -> Figure:
    """One mosaic of first-layer kernels per (title, weight), side by side."""
    figure = _figure(0.5 + 3.6 * len(panels), 4.2)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, weight) in zip(axes, panels):
        shown = min(count, len(weight))
        ax.imshow(kernel_mosaic(weight, shown), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        colour = "RGB" if weight.shape[1] == 3 else "grey"
        ax.set_xlabel(f"first {shown} of {len(weight)} kernels {tuple(weight.shape[2:])}, {colour},\n"
                      f"each scaled to [0, 1]", fontsize=8)
        ax.set_title(title, fontsize=9)
    _suptitle(figure, "layer1 forward kernels")
    return figure


def loss_terms(rows: Sequence[dict]) -> list[str]:
    """The names of the loss terms a run's metrics rows carry (train_loss_<name>: CCL's
    cross-entropy `output` and each pair's loss `pairL`), in their order."""
    return [name[len("train_loss_"):] for name in rows[0] if name.startswith("train_loss_")]


def curves_figure(runs: Sequence[tuple[str, Sequence[dict]]]) -> Figure:
    """Left: training loss (solid; the rule's own loss: CCL's includes its pair losses) and
    validation loss (dashed); middle: validation accuracy, or the autoencoder's validation MSE.
    One colour per run; the first run's metric decides which. Right, where a run logged its loss
    terms: each term's mean per epoch (log scale), one colour per term, one line style per run."""
    metric = validation_metric(runs[0][1])
    terms = list(dict.fromkeys(name for _, rows in runs for name in loss_terms(rows)))
    figure = _figure(15 if terms else 10, 4)
    axes = figure.subplots(1, 3 if terms else 2)
    loss_ax, metric_ax = axes[0], axes[1]
    for (title, rows), colour in zip(runs, _colours(len(runs))):
        epochs = [row["epoch"] for row in rows]
        loss_ax.plot(epochs, [row["train_loss"] for row in rows], color=colour, label=f"{title}, train")
        if "val_loss" in rows[0]:
            loss_ax.plot(epochs, [row.get("val_loss", math.nan) for row in rows], color=colour,
                         linestyle="--", label=f"{title}, validation")
        scale = 100 if metric == "val_acc" else 1
        metric_ax.plot(epochs, [row.get(metric, math.nan) * scale for row in rows], color=colour,
                       marker=".", label=title)
    loss_ax.set_ylabel("loss (training: the rule's own)")
    metric_ax.set_ylabel("validation accuracy (%)" if metric == "val_acc" else "validation MSE")
    for ax in (loss_ax, metric_ax):
        _epoch_axis(ax)
        ax.legend(fontsize=7)
    if terms:
        terms_ax, colours = axes[2], dict(zip(terms, _colours(len(terms))))
        for (title, rows), style in zip(runs, _line_styles(len(runs))):
            epochs = [row["epoch"] for row in rows]
            for name in loss_terms(rows):
                terms_ax.plot(epochs, [row.get(f"train_loss_{name}", math.nan) for row in rows],
                              color=colours[name], linestyle=style, marker=".")
        terms_ax.set_yscale("log")
        terms_ax.set_ylabel("training loss term, mean over the epoch")
        _epoch_axis(terms_ax)
        handles = [Line2D([], [], color=colours[name], label=name) for name in terms]
        handles += [Line2D([], [], color="black", linestyle=style, label=title)
                    for (title, _), style in zip(runs, _line_styles(len(runs)))]
        terms_ax.legend(handles=handles, fontsize=7)
    epochs = [row["epoch"] for _, rows in runs for row in rows]
    _suptitle(figure, f"{'; '.join(title for title, _ in runs)}: training curves, {_epoch_span(epochs)}")
    return figure


def grid_figure(cells: Sequence[dict], title: str,
                paper: Mapping[tuple[float, float], float] | None = None) -> Figure:
    """Mean test accuracy per (lr_F, lr_B), the seed count in each cell; grey where no seed ran.
    With `paper` ({(lr_F, lr_B): accuracy}), two panels more: the paper's cells and ours minus
    the paper's."""
    printed_cells = paper or {}
    forward_rates = sorted({cell["lr_F"] for cell in cells} | {lr_F for lr_F, _ in printed_cells})
    feedback_rates = sorted({cell["lr_B"] for cell in cells} | {lr_B for _, lr_B in printed_cells})
    means = np.full((len(feedback_rates), len(forward_rates)), math.nan)
    labels = np.full(means.shape, "not run", dtype=object)
    for cell in cells:
        row, column = feedback_rates.index(cell["lr_B"]), forward_rates.index(cell["lr_F"])
        labels[row, column] = f"{cell['mean']:.2f}\nn={cell['n']}" if cell["n"] > 0 else "n=0"
        if cell["n"] > 0:
            means[row, column] = cell["mean"]
    panels = [(means, labels, "ours", "mean test accuracy (%)", False)]
    if paper is not None:
        printed = np.array([[paper.get((lr_F, lr_B), math.nan) for lr_F in forward_rates]
                            for lr_B in feedback_rates])
        difference = means - printed
        panels += [(printed, _number_labels(printed, "{:.2f}"), "the paper's", "test accuracy (%)", False),
                   (difference, _number_labels(difference, "{:+.2f}"), "ours minus the paper's",
                    "difference (points)", True)]
    figure = _figure(0.6 + (0.9 * len(forward_rates) + 1.0) * len(panels), 1.2 + 0.6 * len(feedback_rates))
    for ax, panel in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        _grid_panel(figure, ax, forward_rates, feedback_rates, *panel)
    _suptitle(figure, f"{title}: test accuracy at the best epoch, mean over n seeds")
    return figure


def _number_labels(values: np.ndarray, form: str) -> np.ndarray:
    return np.vectorize(lambda value: form.format(value) if math.isfinite(value) else "-",
                        otypes=[object])(values)


def _grid_panel(figure: Figure, ax, forward_rates, feedback_rates, values: np.ndarray, labels: np.ndarray,
                panel_title: str, colour_label: str, centred: bool) -> None:
    """One heatmap of the grid; `centred`: differences, white at 0 and symmetric about it."""
    colours = matplotlib.colormaps["RdBu" if centred else "viridis"].with_extremes(bad=MISSING_COLOUR)
    limit = float(np.nanmax(np.abs(values))) if centred and np.isfinite(values).any() else None
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colours, origin="lower", aspect="auto",
                      vmin=None if limit is None else -limit, vmax=limit)
    for (row, column), label in np.ndenumerate(labels):
        value = values[row, column]
        colour = _text_colour(image, value) if math.isfinite(value) else "black"
        ax.text(column, row, label, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(forward_rates)), [f"{rate:g}" for rate in forward_rates])
    ax.set_yticks(range(len(feedback_rates)), [f"{rate:g}" for rate in feedback_rates])
    ax.set_xlabel("forward learning rate lr_F")
    ax.set_ylabel("feedback learning rate lr_B")
    ax.set_title(panel_title, fontsize=9)
    figure.colorbar(image, ax=ax, label=colour_label)


def default_cka_epochs(available: Sequence[int]) -> list[int]:
    """The first analysed epoch, 1, 5 and the last, those of them that were analysed."""
    wanted = {min(available), 1, 5, max(available)}
    return sorted(wanted & set(available))


def default_cka_points(records: Sequence[dict]) -> tuple[str, list[int]]:
    """('step', every measured step) for a run measured at chosen steps (`analysis_steps`: some
    records have no epoch), else ('epoch', default_cka_epochs)."""
    if any(record.get("epoch") is None for record in records):
        return "step", sorted({record["step"] for record in records})
    return "epoch", default_cka_epochs([record["epoch"] for record in records])


def validation_metric(rows: Sequence[dict]) -> str:
    """`val_acc` for a classification run's metrics, `val_mse` for an autoencoder's."""
    return "val_acc" if "val_acc" in rows[0] else "val_mse"


# --- t-SNE of forward and feedback embeddings (the paper's Figure 3) -----------------------
TSNE_SEED = 0  # sklearn's TSNE random_state: the same layout for the same embeddings
TSNE_PERPLEXITY = 30.0
SKLEARN_MISSING = ("tsne needs scikit-learn, an optional dependency of this project: "
                   "pip install scikit-learn")


@torch.no_grad()
def paired_embeddings(model, objective, inputs: torch.Tensor, labels: torch.Tensor,
                      layers: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer l of `layers`: (a_l of each input, N x D; b_l of each class's one-hot, C x D),
    from one forward and one feedback pass in eval mode, flattened: a forward layer's output and
    the feedback output its pair loss compares it with. The model is left in eval mode (a model
    rebuilt for the figure)."""
    model.eval()
    activations = model(inputs)
    signals = model.feedback(objective.feedback_input(labels))
    def as_rows(output: torch.Tensor) -> np.ndarray:
        return output.flatten(1).double().cpu().numpy()
    return [(as_rows(activations[layer]), as_rows(signals[layer])) for layer in layers]


def fit_tsne(forward: np.ndarray, feedback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One 2-D t-SNE of the N forward embeddings and the C feedback templates together, each
    template entered once (docs/ANALYSES.md says why); seeded, PCA-initialised."""
    try:
        from sklearn.manifold import TSNE  # noqa: PLC0415  (optional: only this figure needs it)
    except ImportError:
        raise ConfigError(SKLEARN_MISSING) from None
    points = np.concatenate([forward, feedback])
    perplexity = min(TSNE_PERPLEXITY, (len(points) - 1) / 3)
    layout = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=TSNE_SEED).fit_transform(points)
    return layout[:len(forward)], layout[len(forward):]


def tsne_figure(rows: Sequence[Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]],
                title: str) -> Figure:
    """Rows of t-SNE panels (a row per layer, a panel per step), each panel (label, forward
    layout N x 2, labels N, feedback layout C x 2): dots the forward embeddings of test images,
    squares (black edge) the feedback templates of the classes, the colour the class."""
    classes = len(rows[0][0][3])
    colours = _colours(classes)
    columns = max(len(row) for row in rows)
    figure = _figure(0.4 + 3.2 * columns, 0.7 + 3.2 * len(rows))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row_axes, row in zip(axes, rows):
        for ax, (label, forward, labels, feedback) in zip(row_axes, row):
            ax.scatter(forward[:, 0], forward[:, 1], s=4, c=[colours[c] for c in labels], alpha=0.6, linewidths=0)
            ax.scatter(feedback[:, 0], feedback[:, 1], s=90, marker="s", c=colours[:len(feedback)],
                       edgecolors="black", linewidths=1.2)
            ax.set_title(label, fontsize=9)
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Line2D([], [], color=colours[c], marker="o", linestyle="", label=str(c)) for c in range(classes)]
    handles += [Line2D([], [], color="grey", marker="o", linestyle="", label="forward: test image"),
                Line2D([], [], color="grey", marker="s", markeredgecolor="black", linestyle="",
                       label="feedback: class one-hot")]
    columns_fitting = max(4, int(figure.get_figwidth() / 1.1))  # legend entries a row of the figure holds
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), columns_fitting), fontsize=7)
    _suptitle(figure, title)
    return figure


# --- reconstructions of autoencoder runs (PIL: the images pixel for pixel) ----------------
FIGURE_IMAGES = 10
FIGURE_SEED = 0  # the task's random damage (DropColor, RandCrop) of the figure's inputs
PADDING = 2
LABEL_WIDTH = 130
FONT_SIZE = 16
TITLE_LINE_HEIGHT = 22


def figure_indices(num_images: int, count: int = FIGURE_IMAGES) -> torch.Tensor:
    """`count` test images spread evenly over the test set: the same in every run."""
    return torch.linspace(0, num_images - 1, min(count, num_images)).round().long()


def figure_batch(test: BatchLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the figure's test images, made as the test set's batches are."""
    picked = figure_indices(test.num_samples).to(test.images.device)
    generator = torch.Generator(device=test.images.device).manual_seed(FIGURE_SEED)
    return test.make_batch(test.images[picked], test.labels[picked], generator)


@torch.no_grad()
def reconstruct(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model.predict(inputs).clamp(0, 1)


def example_rows(inputs: torch.Tensor, targets: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    rows = [("input", inputs)]
    if not torch.equal(inputs, targets):
        rows.append(("target", targets))
    return rows


def _wrapped(text: str, font, width: int) -> list[str]:
    """`text` in lines no wider than `width` pixels (a single long word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def save_rows(rows: Sequence[tuple[str, torch.Tensor]], title: str, path: Path) -> Path:
    """The title, then one labelled row of images per (label, batch); every batch has the same
    size. The images keep their pixels (no resampling)."""
    per_row = len(rows[0][1])
    grid = make_grid(torch.cat([images.float().cpu() for _, images in rows]), nrow=per_row,
                     padding=PADDING, pad_value=1.0)
    pixels = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    font = ImageFont.load_default(size=FONT_SIZE)
    width = LABEL_WIDTH + pixels.shape[1]
    title_lines = _wrapped(title, font, width - 2 * PADDING)
    top = len(title_lines) * TITLE_LINE_HEIGHT
    picture = Image.new("RGB", (width, top + pixels.shape[0]), "white")
    picture.paste(Image.fromarray(pixels), (LABEL_WIDTH, top))
    draw = ImageDraw.Draw(picture)
    for index, line in enumerate(title_lines):
        draw.text((width / 2, (index + 0.5) * TITLE_LINE_HEIGHT), line, fill="black", font=font,
                  anchor="mm")
    row_height = (pixels.shape[0] - PADDING) / len(rows)
    for index, (label, _) in enumerate(rows):
        draw.text((LABEL_WIDTH - 8, top + PADDING + (index + 0.5) * row_height), label, fill="black",
                  font=font, anchor="rm")
    write_stream(path, lambda stream: picture.save(stream, format="PNG"))
    return Path(path)


def best_model_name(run_dir: Path) -> str:
    """'best model (epoch E)', or 'best model' where results.json does not say the epoch."""
    epoch = best_epoch_or_none(run_dir)
    return "best model" + (f" (epoch {epoch})" if epoch is not None else "")


def save_reconstructions(model: torch.nn.Module, data: Data, run_dir: Path,
                         out: Path | None = None) -> Path:
    """`main_ae.py`'s report (RUN_DIR/reconstructions.png): the run's model's reconstructions
    of the figure's test images; `model` holds the best weights."""
    inputs, targets = figure_batch(data.test)
    title = (f"{run_title(run_dir)}: reconstructions by the {best_model_name(run_dir)} of "
             f"{len(inputs)} test images spread over the test set")
    return save_rows([*example_rows(inputs, targets), ("reconstruction", reconstruct(model, inputs))],
                     title, out or Path(run_dir) / RECONSTRUCTIONS)


def save_comparison(runs: Sequence[tuple[Path, str, torch.nn.Module, Data]], out: Path) -> Path:
    """The inputs (and targets) of the first run, then one row of reconstructions per
    (run directory, method, best model, data)."""
    first_dir, _, _, first_data = runs[0]
    inputs, targets = figure_batch(first_data.test)
    rows = example_rows(inputs, targets)
    for run_dir, method, model, data in runs:
        other_inputs, other_targets = figure_batch(data.test)
        if not (torch.equal(other_inputs, inputs) and torch.equal(other_targets, targets)):
            raise ConfigError(f"{run_dir} draws other test images than {first_dir} (another "
                              f"dataset or task_transform): compare runs of the same task")
        rows.append((method, reconstruct(model, other_inputs)))
    described = "; ".join(f"{method} = {run_title(run_dir)}, {best_model_name(run_dir)}"
                          for run_dir, method, _, _ in runs)
    return save_rows(rows, f"Reconstructions of {len(inputs)} test images by the best model of each "
                           f"run. Rows: {described}", out)
