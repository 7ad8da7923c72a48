"""Reconstruction figures of autoencoder runs (the paper's Figure 5 layout): one row of test
inputs, a row of targets where the task's targets differ from its inputs, and one row of
reconstructions per model, on the same 10 fixed test images.

`main_ae.py` writes `reconstructions.png` into every run directory. To compare runs:

    python -m utils.figures compare RUN_BP RUN_CCL --out bp_vs_ccl.png

reads each run's `config.yaml` and `best.pt` and draws its reconstructions under the inputs.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from ccl.cli import DEFAULT_DATA_ROOT, resolve_device
from ccl.run_dir import RunDir
from models import build_model
from utils.data import load_splits
from utils.data.loader import BatchLoader
from utils.data.recipes import Data, ae_data
from utils.errors import ConfigError, UserError

RECONSTRUCTIONS = "reconstructions.png"
FIGURE_IMAGES = 10
FIGURE_SEED = 0  # the task's random damage (DropColor, RandCrop) of the figure's inputs
PADDING = 2
LABEL_WIDTH = 130


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


def save_rows(rows: Sequence[tuple[str, torch.Tensor]], path: Path) -> None:
    """One labelled row of images per (label, batch); every batch has the same size."""
    per_row = len(rows[0][1])
    grid = make_grid(torch.cat([images.float().cpu() for _, images in rows]), nrow=per_row,
                     padding=PADDING, pad_value=1.0)
    pixels = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.new("RGB", (LABEL_WIDTH + pixels.shape[1], pixels.shape[0]), "white")
    picture.paste(Image.fromarray(pixels), (LABEL_WIDTH, 0))
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=16)
    row_height = (pixels.shape[0] - PADDING) / len(rows)
    for index, (label, _) in enumerate(rows):
        draw.text((LABEL_WIDTH - 8, PADDING + (index + 0.5) * row_height), label, fill="black",
                  font=font, anchor="rm")
    picture.save(path)


def save_reconstructions(model: torch.nn.Module, data: Data, run_dir: Path) -> None:
    """`main_ae.py`'s report: the best model's reconstructions of the figure's test images."""
    inputs, targets = figure_batch(data.test)
    save_rows([*example_rows(inputs, targets), ("reconstruction", reconstruct(model, inputs))],
              Path(run_dir) / RECONSTRUCTIONS)


def load_run(run_dir: Path, data_root: Path | None, device: str) -> tuple[str, torch.nn.Module, Data]:
    """(method, best model, data) of a finished autoencoder run."""
    config, run = RunDir(run_dir).saved_config()
    if config.task != "autoencoder":
        raise ConfigError(f"{run_dir} is a {config.task} run; compare draws autoencoder runs")
    weights = RunDir(run_dir).load_best(device)
    root = Path(data_root or run.get("data_root", DEFAULT_DATA_ROOT))
    data = ae_data(config, load_splits(config.dataset, root, config.seed).to(device))
    model = build_model(config, data.input_shape, data.num_classes).to(device)
    model.load_state_dict(weights)
    return config.method, model, data


def compare(run_dirs: Sequence[Path], out: Path, data_root: Path | None, device: str) -> None:
    """Inputs (and targets) of the first run, then one row of reconstructions per run."""
    rows, first_batch = [], None
    for run_dir in run_dirs:
        method, model, data = load_run(run_dir, data_root, device)
        inputs, targets = figure_batch(data.test)
        if first_batch is None:
            first_batch = inputs, targets
            rows += example_rows(inputs, targets)
        elif not (torch.equal(inputs, first_batch[0]) and torch.equal(targets, first_batch[1])):
            raise ConfigError(f"{run_dir} draws other test images than {run_dirs[0]} (another "
                              f"dataset or task_transform): compare runs of the same task")
        rows.append((method, reconstruct(model, inputs)))
    save_rows(rows, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.figures",
                                     description="Figures of autoencoder runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    comparison = commands.add_parser("compare", help="inputs and each run's reconstructions")
    comparison.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    comparison.add_argument("--out", type=Path, required=True, help="PNG file to write")
    comparison.add_argument("--data_root", type=Path, default=None,
                            help="datasets (default: each run's own)")
    comparison.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    try:
        compare(args.runs, args.out, args.data_root, resolve_device(args.device))
    except UserError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
