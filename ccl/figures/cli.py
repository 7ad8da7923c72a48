"""`python -m ccl.figures COMMAND ...`: the figures of ccl/plots.py from run directories
(read through ccl/run_dir.py) and grid CSVs; the commands are listed in its package docstring."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ccl.cli import resolve_device
from ccl.measures import probe_batch
from ccl.plots import (
    alignment_figure,
    best_epoch_or_none,
    cka_figure,
    curves_figure,
    default_cka_points,
    first_layer_kernels,
    fit_tsne,
    grid_figure,
    kernels_figure,
    mean_cka,
    paired_embeddings,
    read_grid,
    run_title,
    run_titles,
    runs_title,
    save_comparison,
    save_png,
    save_reconstructions,
    tsne_figure,
    validation_metric,
)
from ccl.reproduce.paper import FIGURE7
from ccl.run_dir import ANALYSIS, BEST, FIGURES, METRICS, RunDir
from ccl.scripts import rebuild
from utils.data.recipes import Data
from utils.errors import ConfigError, UserError
from utils.io import WriteError


def draw_cka(args) -> Path:
    runs = [(run, RunDir(run).analysis_records()) for run in args.runs]
    if args.steps:
        key, points = "step", args.steps
    elif args.epochs:
        key, points = "epoch", args.epochs
    else:
        key, points = default_cka_points(runs[0][1])
    chosen = []  # per run, its record at each point
    for run, records in runs:
        by_point = {record[key]: record for record in records if record.get(key) is not None}
        missing = [point for point in points if point not in by_point]
        if missing:
            raise ConfigError(f"{run / ANALYSIS} has no record of {key} {', '.join(map(str, missing))}; "
                              f"it has {key}s {', '.join(map(str, by_point)) or 'none'}")
        chosen.append([by_point[point] for point in points])
    layers = chosen[0][0]["layers"]
    for run, records in zip(args.runs, chosen):
        if records[0]["layers"] != layers:
            raise ConfigError(f"{run}: its layers differ from {args.runs[0]}'s: average runs of one "
                              f"architecture")
    labels = [f"{key} {point}" + (" (initial)" if point == 0 else "") for point in points]
    matrices = [mean_cka([records[index] for records in chosen]) for index in range(len(points))]
    figure = cka_figure(list(zip(labels, matrices)), layers, runs_title(args.runs))
    return save_png(figure, args.out or args.runs[0] / FIGURES["cka"])


def draw_alignment(args) -> Path:
    runs = []
    for run, title in zip(args.runs, run_titles(args.runs)):
        records = [record for record in RunDir(run).analysis_records() if record["epoch"] is not None]
        if not records:
            raise ConfigError(f"{run / ANALYSIS} has no record of an epoch (alignment draws epochs)")
        runs.append((title, records))
    return save_png(alignment_figure(runs), args.out or args.runs[0] / FIGURES["alignment"])


def draw_kernels(args) -> Path:
    if args.count < 1:
        raise ConfigError(f"--count {args.count}: draw at least one kernel")
    panels = []
    for run, title in zip(args.runs, run_titles(args.runs)):
        weight, epoch = first_layer_kernels(run), best_epoch_or_none(run)
        panels.append((f"{title}\n{BEST}" + (f", epoch {epoch}" if epoch is not None else ""),
                       weight))
    return save_png(kernels_figure(panels, args.count), args.out or args.runs[0] / FIGURES["kernels"])


def draw_curves(args) -> Path:
    titles = run_titles(args.runs)
    runs = [(title, RunDir(run).metrics_rows()) for run, title in zip(args.runs, titles)]
    metric = validation_metric(runs[0][1])
    for run, (_, rows) in zip(args.runs, runs):
        if metric not in rows[0]:
            raise ConfigError(f"{run / METRICS} has no {metric}, as the first run's has: draw "
                              f"curves of runs of one task")
    return save_png(curves_figure(runs), args.out or args.runs[0] / FIGURES["curves"])


def autoencoder_run(run_dir: Path, args) -> tuple[Path, str, torch.nn.Module, Data]:
    """(run directory, method, best model, data) of an autoencoder run, rebuilt."""
    config, _ = RunDir(run_dir).saved_config()
    if config.task != "autoencoder":
        raise ConfigError(f"{run_dir} is a {config.task} run; {args.command} draws autoencoder "
                          f"runs (main_ae.py)")
    experiment = rebuild(RunDir(run_dir), args.data_root, resolve_device(args.device))
    return run_dir, config.method, experiment.model, experiment.data


def draw_reconstructions(args) -> Path:
    run_dir, _, model, data = autoencoder_run(args.run, args)
    return save_reconstructions(model, data, run_dir, args.out)


def draw_comparison(args) -> Path:
    return save_comparison([autoencoder_run(run, args) for run in args.runs], args.out)


def draw_tsne(args) -> Path:
    run_dir = RunDir(args.run)
    config, _ = run_dir.saved_config()
    if config.task != "classification":
        raise ConfigError(f"{args.run} is a {config.task} run; tsne draws classification runs, whose "
                          f"feedback network receives class one-hots")
    if args.steps is None:  # every step whose weights the run kept
        args.steps = sorted(int(path.stem[len("step"):]) for path in run_dir.snapshot_path(0).parent.glob("step*.pt"))
        if not args.steps:
            raise ConfigError(f"{args.run} kept no weights: train it with --analysis_steps S1,S2,... "
                              f"--analysis_snapshots 1")
    missing = [step for step in args.steps if not run_dir.snapshot_path(step).is_file()]
    if missing:
        raise ConfigError(f"{args.run} has no weights of step {', '.join(map(str, missing))} (no "
                          f"{run_dir.snapshot_path(missing[0]).relative_to(args.run)}): train it with "
                          f"--analysis_steps {','.join(map(str, args.steps))} --analysis_snapshots 1")
    if args.samples < 1:
        raise ConfigError(f"--samples {args.samples}: draw at least one test image")
    device = resolve_device(args.device)
    experiment = rebuild(run_dir, args.data_root, device, best=False)
    pairs = len(experiment.model.layers)
    layers = [pairs - 1] if args.layers is None else args.layers
    for layer in layers:
        if not 0 <= layer < pairs:
            raise ConfigError(f"--layers {layer}: the pairs are 0..{pairs - 1} (a_l against b_l)")
    inputs, labels = probe_batch(experiment.data.test, args.samples, config.seed)
    rows = {layer: [] for layer in layers}  # per layer, one fit per step
    for step in args.steps:
        experiment.model.load_state_dict(torch.load(run_dir.snapshot_path(step), map_location=device,
                                                    weights_only=True))
        embeddings = paired_embeddings(experiment.model, experiment.objective, inputs, labels, layers)
        for layer, (forward, feedback) in zip(layers, embeddings):
            forward_2d, feedback_2d = fit_tsne(forward, feedback)
            rows[layer].append((f"a{layer} with b{layer}, step {step}", forward_2d, labels.cpu().numpy(),
                                feedback_2d))
    title = (f"{run_title(args.run)}: t-SNE of forward outputs a_l ({len(labels)} test images) with "
             f"feedback outputs b_l (the {experiment.data.num_classes} class one-hots), one fit per panel")
    return save_png(tsne_figure(list(rows.values()), title), args.out or args.run / FIGURES["tsne"])


def draw_grid(args) -> Path:
    cells = read_grid(args.csv)
    paper = None if args.paper is None else FIGURE7[args.paper]
    figure = grid_figure(cells, args.title or args.csv.stem, paper)
    return save_png(figure, args.out or args.csv.with_suffix(".png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ccl.figures",
                                     description="Figures of runs: CKA, weight and gradient alignment, "
                                                 "first-layer kernels, training curves, learning-rate grids.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, draw, help_text, out_required=False):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--out", type=Path, default=None, required=out_required, help="PNG file to write")
        sub.set_defaults(draw=draw)
        return sub

    cka = command("cka", draw_cka, "heatmaps of the forward x feedback CKA matrix at chosen epochs or "
                                   "steps, the mean over the runs given (seeds), and its changes")
    cka.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    when = cka.add_mutually_exclusive_group()
    when.add_argument("--epochs", type=int, nargs="+", default=None, metavar="E",
                      help="epochs to draw (default: the first, 1, 5 and the last analysed)")
    when.add_argument("--steps", type=int, nargs="+", default=None, metavar="S",
                      help="global steps to draw (records of analysis_steps; the default for a run "
                           "that has them: every measured step)")
    alignment = command("alignment", draw_alignment,
                        "weight cosine and gradient angle per layer over epochs, runs overlaid")
    alignment.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    kernels = command("kernels", draw_kernels, "first-layer conv kernels of runs side by side (e.g. BP, CCL)")
    kernels.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    kernels.add_argument("--count", type=int, default=64, help="kernels per run (default 64)")
    curves = command("curves", draw_curves, "training and validation loss, validation accuracy or MSE")
    curves.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    tsne = command("tsne", draw_tsne, "t-SNE of forward embeddings of test images with the feedback "
                                      "embeddings of the class one-hots at the paired layer, at steps "
                                      "whose weights the run kept (analysis_snapshots)")
    tsne.add_argument("run", type=Path, metavar="RUN_DIR")
    tsne.add_argument("--steps", type=int, nargs="+", default=None, metavar="S",
                      help="global steps to draw (each needs RUN_DIR/snapshots/step<S>.pt; default: "
                           "every step whose weights the run kept)")
    tsne.add_argument("--layers", type=int, nargs="+", default=None, metavar="L",
                      help="the pairs, one row of panels each: a_L against b_L (default: L-1 of the "
                           "L layers, the penultimate)")
    tsne.add_argument("--samples", type=int, default=1000,
                      help="the first N test images (default 1000)")
    tsne.add_argument("--data_root", type=Path, default=None, help="datasets (default: the run's own)")
    tsne.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    grid = command("grid", draw_grid, "mean test accuracy over lr_F x lr_B, seed count per cell")
    grid.add_argument("csv", type=Path, metavar="GRID_CSV")
    grid.add_argument("--title", default=None, help="figure title (default: the CSV's name)")
    grid.add_argument("--paper", choices=sorted(FIGURE7), default=None, metavar="CONFIG",
                      help="draw beside ours the paper's Figure 7 grid of this config and ours minus "
                           f"it ({', '.join(sorted(FIGURE7))})")
    reconstructions = command("reconstructions", draw_reconstructions,
                              "an autoencoder run's reconstructions.png, drawn again from its best model")
    reconstructions.add_argument("run", type=Path, metavar="RUN_DIR")
    compare = command("compare", draw_comparison,
                      "test images and the reconstructions of several autoencoder runs (e.g. BP, CCL)",
                      out_required=True)  # a comparison belongs to no one run directory
    compare.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    for sub in (reconstructions, compare):
        sub.add_argument("--data_root", type=Path, default=None, help="datasets (default: each run's own)")
        sub.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        out = args.draw(args)
    except WriteError as error:  # by default a figure goes into the run directory
        hint = "; pass --out FILE to write it elsewhere" if getattr(args, "out", None) is None else ""
        print(f"{parser.prog}: error: {error}{hint}", file=sys.stderr)
        return error.exit_code
    except UserError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
