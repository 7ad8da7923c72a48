"""Grids through the reproduction runner: `run CONFIG --grid KEY=V1,V2 ...` plans every
combination x seed (each combination names its run directories), `table --grid KEY ...` writes
one CSV per grid, which `python -m ccl.figures grid` draws."""
import csv
from pathlib import Path

import pytest
from conftest import REPO
from runs import write_results

from ccl.figures.cli import main as figures_main
from ccl.reproduce.cli import main

YAML = str(REPO / "yaml/mlp/mnist_ccl.yaml")


def test_every_combination_with_every_seed_seed_by_seed(tmp_path, capsys):
    assert main(["run", YAML, "--grid", "lr_F=0.1,0.2", "lr_B=0,0.5", "--seeds", "1", "2",
                 "--epochs", "3", "--runs_root", str(tmp_path), "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    run_dirs = [line.split("--out_dir ")[1].split()[0] for line in lines]
    assert run_dirs == [f"{tmp_path}/mlp/mnist_ccl-epochs=3-lr_B={b}-lr_F={f}/seed{seed}"
                        for seed in (1, 2) for f in ("0.1", "0.2") for b in ("0.0", "0.5")]
    assert all(line.startswith("new") for line in lines)
    assert "--lr_F 0.2 --lr_B 0.5" in lines[3]


@pytest.mark.parametrize("grid, message", [
    (["lr_FF=0.1"], "--grid lr_FF=0.1: 'lr_FF' is not a config key (did you mean lr_F?)"),
    (["lr_F=0.1,fast"], "--grid lr_F: 'fast' is not a number"),
    (["epochs=1.5"], "--grid epochs: '1.5' is not an integer"),
    (["lr_F=-1"], "--grid lr_F: lr_F must be >= 0"),
    (["act_F=elu,relu"], "--grid act_F: a grid varies numeric keys"),
    (["lr_F"], "--grid lr_F: give the key's values as lr_F=V1,V2,..."),
    (["seed=1,2"], "use --seeds"),
    (["lr_F=0.1", "lr_F=0.2"], "--grid lr_F: the key is set twice"),
])
def test_bad_grids_exit_2_naming_the_problem(tmp_path, capsys, grid, message):
    assert main(["run", YAML, "--grid", *grid, "--runs_root", str(tmp_path), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def grid_runs(tmp_path):
    root = tmp_path / "runs"
    for seed, acc in ((1, 0.90), (2, 0.92)):
        write_results(root, "mlp/mnist_ccl-epochs=3-lr_B=0.0-lr_F=0.1", seed, test_acc=acc)
    write_results(root, "mlp/mnist_ccl-epochs=3-lr_B=0.5-lr_F=0.1", 1, test_acc=0.95)
    write_results(root, "mlp/mnist_ccl-epochs=3-lr_B=0.5-lr_F=0.1", 2, status="diverged")
    write_results(root, "mlp/mnist_ccl-epochs=3-lr_B=0.0-lr_F=0.2", 1, status="diverged")
    write_results(root, "mlp/mnist_ccl-epochs=1-lr_B=0.0-lr_F=0.1", 1, test_acc=0.5)  # another grid
    write_results(root, "mlp/mnist_ccl-epochs=3-lr_F=0.1", 1, test_acc=0.5)  # not a cell: no lr_B
    write_results(root, "mlp/mnist_bp-epochs=3-lr_B=0.0-lr_F=0.1", 1, test_acc=0.97)
    return root


def test_table_writes_one_csv_per_grid_that_the_figure_draws(grid_runs, capsys):
    assert main(["table", "yaml/mlp/mnist_ccl.yaml", "--grid", "lr_F", "lr_B", "--runs_root",
                 str(grid_runs)]) == 0
    tables = grid_runs / "tables"
    written = capsys.readouterr().out.split()
    assert written == [str(tables / "grid_lr_F_lr_B_mlp_mnist_ccl-epochs=1.csv"),
                       str(tables / "grid_lr_F_lr_B_mlp_mnist_ccl-epochs=3.csv")]
    rows = list(csv.DictReader(Path(written[1]).read_text().splitlines()))
    assert [(r["lr_F"], r["lr_B"], r["mean"], r["std"], r["n"], r["diverged"]) for r in rows] == [
        ("0.1", "0", "91.0", "1.4142", "2", "0"),
        ("0.1", "0.5", "95.0", "", "1", "1"),
        ("0.2", "0", "", "", "0", "1"),
    ]
    assert figures_main(["grid", written[1]]) == 0
    assert (tables / "grid_lr_F_lr_B_mlp_mnist_ccl-epochs=3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_without_config_takes_every_config_with_the_keys(grid_runs, tmp_path, capsys):
    assert main(["table", "--grid", "lr_F", "lr_B", "--runs_root", str(grid_runs), "--results_dir",
                 str(tmp_path / "out")]) == 0
    assert len(capsys.readouterr().out.split()) == 3  # mnist_bp, and mnist_ccl's two grids


@pytest.mark.parametrize("argv, message", [
    (["table", "--grid", "lr_F", "lr_X"], "--grid lr_X: not a config key"),
    (["table", "--grid", "loss_scale_C"], "sets loss_scale_C in its directory name"),
    (["table", "yaml/mlp/mnist_ccl.yaml"], "table takes config files with --grid only"),
    (["table", "--split", "val"], "--split applies to the --grid tables"),
])
def test_bad_grid_tables(grid_runs, capsys, argv, message):
    assert main([*argv, "--runs_root", str(grid_runs)]) == 2
    assert message in capsys.readouterr().err


def test_a_grid_of_validation_accuracies_leaves_the_test_set_alone(tmp_path, capsys):
    """--split val: the validation accuracy of the model each run kept (results.json's val_acc),
    to choose a setting without looking at the test set."""
    root = tmp_path / "runs"
    for lr, val, test in ((0.1, 0.93, 0.5), (1.0, 0.80, 0.99)):
        write_results(root, f"mlp/mnist_fa-epochs=10-lr_F={lr}", 2023, val_acc=val, test_acc=test)
    assert main(["table", "--grid", "lr_F", "--split", "val", "--runs_root", str(root)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(root / "tables/grid_lr_F_mlp_mnist_fa-epochs=10-val.csv")]
    rows = list(csv.DictReader(Path(written[0]).read_text().splitlines()))
    assert [(r["lr_F"], r["mean"]) for r in rows] == [("0.1", "93.0"), ("1", "80.0")]
