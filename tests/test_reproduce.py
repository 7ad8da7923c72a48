"""The reproduction runner on the tiny MNIST (real entry-script subprocesses, 1-2 epochs) and the
aggregation on synthetic results files."""
import csv
import json
import signal
import statistics
import subprocess
import sys
import time

import pytest
from conftest import REPO
from runs import write_results

import ccl.experiment as experiment
from ccl.reproduce.cli import main
from ccl.reproduce.paper import TABLES
from ccl.reproduce.table import collect, markdown, table_rows, write_tables
from ccl.scripts import MLP
from ccl.trainer import Trainer

YAML = str(REPO / "yaml/mlp/mnist_ccl.yaml")


@pytest.fixture
def runner(tiny_mnist, tmp_path):
    """main(...) of the runner on the tiny MNIST, its runs under tmp_path/runs."""
    data_root, checksum_file = tiny_mnist
    launcher = (sys.executable, str(REPO / "tests/launch.py"), str(checksum_file))

    def run(*args):
        return main(["run", *args, "--runs_root", str(tmp_path / "runs"), "--data_root",
                     str(data_root), "--devices", "cpu"], launcher=launcher)
    return run


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_runs_every_seed_records_a_failure_and_skips_finished_runs(runner, tmp_path, capsys):
    bad = tmp_path / "mlp/bad.yaml"  # the MLP script rejects a warm-up: exit code 2
    bad.parent.mkdir()
    bad.write_text(open(YAML).read().replace("warmup: 0", "warmup: 5"))

    assert runner(str(bad), YAML, "--seeds", "1", "2", "--jobs", "2", "--epochs", "1") == 1
    out = capsys.readouterr().out
    runs = tmp_path / "runs/mlp"
    for seed in (1, 2):  # the failures did not stop the good runs
        results = read_json(runs / f"mnist_ccl-epochs=1/seed{seed}/results.json")
        assert results["status"] == "finished" and results["seed"] == seed and results["epochs"] == 1
        log = runs / f"bad-epochs=1/seed{seed}.log"
        assert "warm-up" in log.read_text()
        assert f"FAILED   {runs}/bad-epochs=1/seed{seed}: exit 2; log {log}" in out
    assert "4 runs: 2 finished, 2 failed" in out

    finished = runs / "mnist_ccl-epochs=1/seed1/results.json"
    stamp = finished.stat().st_mtime_ns
    assert runner(YAML, "--seeds", "1", "2", "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert "2 already ended (skipped), 0 to resume, 0 to start" in out
    assert "start " not in out and finished.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_resumes_an_interrupted_run(runner, tiny_mnist, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "runs/mlp/mnist_ccl-epochs=2/seed1"
    finish_epoch = Trainer._finish_epoch

    def finish_epoch_then_sigterm(self):  # as if SIGTERM came during epoch 1
        finish_epoch(self)
        self.stop.signal_number = signal.SIGTERM
    monkeypatch.setattr(Trainer, "_finish_epoch", finish_epoch_then_sigterm)
    assert experiment.main(MLP, [
        "--yaml", YAML, "--seed", "1", "--epochs", "2", "--out_dir", str(run_dir),
        "--data_root", str(tiny_mnist[0])]) == 128 + signal.SIGTERM
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "results.json").exists()

    assert runner(YAML, "--seeds", "1", "--epochs", "2") == 0
    assert "0 already ended (skipped), 1 to resume, 0 to start" in capsys.readouterr().out
    assert "resuming" in (run_dir.parent / "seed1.log").read_text()
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert read_json(run_dir / "results.json")["status"] == "finished"


@pytest.mark.slow
def test_a_ctrl_c_reaches_the_runs_as_sigterm_and_nothing_new_starts(tmp_path, capsys):
    """The fake run sends SIGINT to the runner, then waits for the runner to pass it on."""
    fake_run = tmp_path / "fake_run.py"
    fake_run.write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # only a SIGTERM stops it
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))\n"
        "os.kill(os.getppid(), signal.SIGINT)\n"
        "time.sleep(10)\n")
    code = main(["run", YAML, "--seeds", "1", "2", "--runs_root", str(tmp_path / "runs")],
                launcher=(sys.executable, str(fake_run)))
    out = capsys.readouterr().out
    assert code == 128 + signal.SIGINT
    started = [line for line in out.splitlines() if line.startswith("start")]
    assert len(started) == 1 and "seed1" in started[0]
    assert any(line.startswith("stopped") for line in out.splitlines())
    assert "2 runs: 1 stopped, 1 not started" in out and "stopped by SIGINT" in out


# --- aggregation --------------------------------------------------------------------------------

@pytest.fixture
def synthetic_runs(tmp_path):
    root = tmp_path / "runs"
    for seed, acc in enumerate((0.97, 0.98, 0.99)):
        write_results(root, "mlp/mnist_ccl", seed, test_acc=acc, wall_seconds=30.0 * (seed + 1))
    write_results(root, "mlp/mnist_ccl-epochs=1", 0, test_acc=0.87)
    write_results(root, "mlp/mnist_bp", 0, test_acc=0.9834)  # n = 1: +0.15 against paper's 0.10
    write_results(root, "mlp/mnist_bp", 1, status="diverged")
    released = "cnn_ae/stl10_ccl_legacy-warmup_counter=batch_in_epoch"  # the released procedure
    write_results(root, released, 0, test_mse=0.0087)
    write_results(root, released, 1, test_mse=0.0089)
    write_results(root, "cnn/mnist_ccl", 0, test_acc=0.99, dataset="MNIST_CNN", method="CCL")
    return root


def rows_by_config(table, root):
    return {(row.config, row.overrides): row for row in table_rows(TABLES[table], collect(root))}


def test_mean_sample_std_n_and_flag(synthetic_runs):
    rows = rows_by_config("table1", synthetic_runs)
    full = rows["mlp/mnist_ccl", ""]
    assert full.n == 3 and full.mean == pytest.approx(98.0)
    assert full.std == pytest.approx(1.0)  # n - 1: the population std would be 0.816
    assert full.wall_seconds == pytest.approx(60.0)
    assert full.combined_std == pytest.approx((1.0 + 0.10 ** 2) ** 0.5) and not full.flagged

    short = rows["mlp/mnist_ccl", "epochs=1"]
    assert short.n == 1 and short.std is None and short.flagged

    bp = rows["mlp/mnist_bp", ""]
    assert bp.n == 1 and bp.diverged == 1
    assert bp.diff == pytest.approx(0.15) and bp.flagged  # s_ours counts as 0 with n = 1
    assert rows["mlp/fmnist_ccl", ""].n == 0 and not rows["mlp/fmnist_ccl", ""].flagged

    ae = rows_by_config("autoencoder", synthetic_runs)["cnn_ae/stl10_ccl_legacy", ""]
    assert ae.mean == pytest.approx(0.0088)
    assert ae.std == pytest.approx(statistics.stdev([0.0087, 0.0089]))
    assert ae.diff == pytest.approx(0.0002) and ae.flagged  # 0.0002 > hypot(0.00014, 0.0001)

    other = rows_by_config("table3", synthetic_runs)["cnn/mnist_ccl", ""]
    assert other.target is None and other.dataset == "MNIST_CNN" and not other.flagged
    assert other.procedure == "fixed"  # its directory does not name the released warm-up counter


def test_a_row_says_which_procedure_ran(synthetic_runs):
    write_results(synthetic_runs, "cnn_ae/stl10_ccl_legacy", 0, test_mse=0.0090)  # our defaults
    write_results(synthetic_runs, "cnn_ae/stl10_ccl_legacy-epochs=2-warmup_counter=batch_in_epoch", 0,
                  test_mse=0.02)
    rows = [(row.procedure, row.overrides, row.n)
            for row in table_rows(TABLES["autoencoder"], collect(synthetic_runs))
            if row.config == "cnn_ae/stl10_ccl_legacy"]
    assert rows == [("released", "", 2), ("released", "epochs=2", 1), ("fixed", "", 1)]


def test_markdown_rows(synthetic_runs):
    text = markdown(TABLES["table1"], table_rows(TABLES["table1"], collect(synthetic_runs)))
    lines = text.splitlines()
    assert lines[0] == "### Table 1: MLP test accuracy (%), model selection val_loss"
    assert "| MNIST | CCL | mlp/mnist_ccl | both | 98.00 +- 1.00 (n=3) | 98.13 +- 0.10 | -0.13 |  | 60 s |" in lines
    assert "| MNIST | CCL | mlp/mnist_ccl (epochs=1) | both | 87.00 (n=1) | 98.13 +- 0.10 | -11.13 | yes | 60 s |" in lines
    assert "| MNIST | BP | mlp/mnist_bp | both | 98.34 (n=1, 1 diverged) | 98.19 +- 0.10 | +0.15 | yes | 60 s |" in lines
    assert "| CIFAR100 | CCL | mlp/cifar100_ccl | both | no runs | 21.76 +- 0.22 |  |  |  |" in lines
    ae = markdown(TABLES["autoencoder"], table_rows(TABLES["autoencoder"], collect(synthetic_runs)))
    assert "| STL10 | CCL | cnn_ae/stl10_ccl_legacy | released | 0.0088 +- 0.0001 (n=2) | 0.0086 +- 0.0001 | +0.0002 | yes | 60 s |" in ae


def test_table_command_prints_markdown_and_writes_csv(synthetic_runs, tmp_path, capsys):
    assert main(["table", "--runs_root", str(synthetic_runs), "--results_dir", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    for table in TABLES.values():
        assert f"### {table.title}" in out
    rows = list(csv.DictReader(open(tmp_path / "results/table1.csv")))
    assert len(rows) == 32 + 1  # the paper's rows (8 rules x 4 datasets) and the epochs=1 variant
    ccl = next(row for row in rows if row["config"] == "mlp/mnist_ccl" and not row["overrides"])
    assert (ccl["n"], ccl["ours_mean"], ccl["ours_std"], ccl["paper_mean"], ccl["flag"]) == \
        ("3", "98.0", "1.0", "98.13", "0")
    assert (tmp_path / "results/table3.csv").is_file() and (tmp_path / "results/autoencoder.csv").is_file()
    assert write_tables(synthetic_runs, tmp_path / "again") == out.rstrip("\n")


@pytest.mark.slow
def test_the_runs_die_with_a_killed_runner(tmp_path):
    """A runner killed outright (SIGKILL, no handler runs) still stops its runs: they get the
    SIGTERM that makes a run checkpoint and stop."""
    fake_run = tmp_path / "fake_run.py"
    marker = tmp_path / "stopped-by-sigterm"
    fake_run.write_text(
        "import pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(marker)!r}).touch(), sys.exit(143)))\n"
        f"pathlib.Path({str(tmp_path / 'started')!r}).touch()\n"
        "time.sleep(30)\n")
    runner = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, sys.argv[1]); from ccl.reproduce.cli import main;"
        "main(['run', sys.argv[2], '--seeds', '1', '--runs_root', sys.argv[3]], launcher=(sys.executable, sys.argv[4]))"),
        str(REPO), YAML, str(tmp_path / "runs"), str(fake_run)])
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.05)
    runner.kill()
    runner.wait()
    while not marker.exists():
        assert time.monotonic() < deadline, "the run outlived its runner"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ['{"status": "finished", "test_a', '{"status": "finished"}'])
def test_a_damaged_results_file_counts_as_not_finished(runner, tmp_path, capsys, damage):
    assert runner(YAML, "--seeds", "1", "--epochs", "1") == 0
    results = tmp_path / "runs/mlp/mnist_ccl-epochs=1/seed1/results.json"
    results.write_text(damage)
    capsys.readouterr()
    assert runner(YAML, "--seeds", "1", "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert f"warning: {results}" in out and "it is resumed from its checkpoint" in out
    assert "1 to resume" in out and read_json(results)["status"] == "finished"

    results.write_text(damage)
    assert main(["table", "--runs_root", str(tmp_path / "runs")]) == 1  # it was the only run
    printed = capsys.readouterr()
    assert f"warning: {results}" in printed.err and "that run is left out" in printed.err
    assert "nothing was found under --runs_root" in printed.err
    assert "| mlp/mnist_ccl (epochs=1) |" not in printed.out


def test_table_writes_beside_the_runs_and_leaves_results_alone(synthetic_runs, capsys):
    committed = (REPO / "results/table1.csv").read_text()
    assert main(["table", "--runs_root", str(synthetic_runs)]) == 0
    assert (synthetic_runs / "tables/table1.csv").is_file()
    assert f"CSV files in {synthetic_runs / 'tables'}/" in capsys.readouterr().err
    assert (REPO / "results/table1.csv").read_text() == committed


def test_a_device_hint_names_the_runners_own_flag(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["run", YAML, "--devices", "cuda:0", "--dry_run"]) == 2
    assert "use --devices cpu" in capsys.readouterr().err


def test_the_table_runs_follow_the_released_procedure_unless_asked(capsys):
    assert main(["run", "--table", "table3", "--seeds", "1", "--dry_run", "--devices", "cpu"]) == 0
    released = capsys.readouterr().out.splitlines()
    cifar10_ccl = next(line for line in released if "cifar10_ccl" in line)
    assert "cifar10_ccl-augment_validation=1-warmup_counter=batch_in_epoch/seed1" in cifar10_ccl
    assert "--warmup_counter batch_in_epoch --augment_validation 1" in cifar10_ccl
    assert main(["run", "--table", "table3", "--seeds", "1", "--dry_run", "--devices", "cpu",
                 "--procedure", "fixed"]) == 0
    fixed = capsys.readouterr().out
    assert "cnn/cifar10_ccl/seed1 --device cpu" in fixed and "warmup_counter" not in fixed
    assert "--overwrite" not in fixed  # the runner never asks a run to delete one


def test_select_picks_a_selection_and_old_runs_tabulate_with_the_others_empty(synthetic_runs, tmp_path,
                                                                             capsys):
    selections = {"val_loss": {"epoch": 3, "test_acc": 0.90}, "val_acc": {"epoch": 9, "test_acc": 0.92},
                  "last": {"epoch": 10, "test_acc": 0.91}}
    for seed in (0, 1):
        write_results(synthetic_runs, "mlp/fmnist_bp", seed, test_acc=0.90, selections=selections)
    for select, mean in (("val_loss", 90.0), ("val_acc", 92.0), ("last", 91.0)):
        rows = {(r.config, r.overrides): r for r in table_rows(TABLES["table1"], collect(synthetic_runs), select)}
        assert rows["mlp/fmnist_bp", ""].mean == pytest.approx(mean) and rows["mlp/fmnist_bp", ""].n == 2
        assert rows["mlp/mnist_ccl", ""].n == (3 if select == "val_loss" else 0)  # written before selections

    assert main(["table", "--runs_root", str(synthetic_runs), "--select", "all"]) == 0
    out = capsys.readouterr().out
    assert "| dataset | method | config | procedure | val_loss | val_acc | last | paper |" in out
    assert ("| FashionMNIST | BP | mlp/fmnist_bp | both | 90.00 +- 0.00 (n=2, epoch 3) | 92.00 +- 0.00 "
            "(n=2, epoch 9) | 91.00 +- 0.00 (n=2, epoch 10) | 89.58 +- 0.25 |") in out
    assert "| MNIST | CCL | mlp/mnist_ccl | both | 98.00 +- 1.00 (n=3, epoch 1) | no runs | no runs |" in out
    rows = list(csv.DictReader(open(synthetic_runs / "tables/table1.csv")))
    assert {row["selection"] for row in rows} == {"val_loss", "val_acc", "last"}


def test_an_unknown_selection_is_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["table", "--select", "best"])
    assert stop.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err


def test_table1_shows_the_baselines_by_dataset_beside_the_papers(synthetic_runs):
    write_results(synthetic_runs, "mlp/mnist_drtp", 0, test_acc=0.95, dataset="MNIST", method="DRTP")
    write_results(synthetic_runs, "mlp/mnist_fa", 0, test_acc=0.96)
    rows = table_rows(TABLES["table1"], collect(synthetic_runs))
    mnist = [(row.method, row.target.note if row.target else None) for row in rows
             if row.dataset == "MNIST" and not row.overrides]
    assert mnist == [("BP", ""), ("FA", ""), ("DFA", ""), ("DRL", ""), ("L-DRL", ""), ("FW-DTP", ""),
                     ("DRTP", ""), ("CCL", "")]  # DTP and FWDTP-BN have no number, nor runs here
    text = markdown(TABLES["table1"], rows)
    assert "| MNIST | FA | mlp/mnist_fa | both | 96.00 (n=1) | 96.96 +- 0.05 | -0.96 | yes |" in text
    assert "| MNIST | DRTP | mlp/mnist_drtp | both | 95.00 (n=1) | 92.16 +- 0.18 |" in text


def test_table1_runs_every_rule_and_a_dry_run_sums_up_and_warns_of_missing_data(tiny_mnist, tmp_path, capsys):
    """Table 1 has every rule's row (DTP and FWDTP-BN beside them, unnumbered): --table table1 runs
    10 configs per dataset, 40. The dry run ends with how many runs there are and warns of each
    dataset not under --data_root."""
    write_results(tmp_path / "runs", "mlp/mnist_drtp", 1, test_acc=0.9)
    assert main(["run", "--table", "table1", "--seeds", "1", "--runs_root", str(tmp_path / "runs"),
                 "--data_root", str(tiny_mnist[0]), "--dry_run", "--devices", "cpu"]) == 0
    printed = capsys.readouterr()
    configs = [line.split("--yaml ")[1].split()[0] for line in printed.out.splitlines()]
    rules = ("bp", "fa", "dfa", "drl", "ldrl", "fwdtp", "dtp", "fwdtp_bn", "drtp", "ccl")
    assert sorted(configs) == sorted(f"yaml/mlp/{data}_{rule}.yaml" for data in ("mnist", "fmnist", "cifar10",
                                                                                 "cifar100") for rule in rules)
    warnings = [line for line in printed.err.splitlines() if line.startswith("warning: ")]
    assert [line.split()[1] for line in warnings] == ["CIFAR10", "CIFAR100", "FashionMNIST"]  # MNIST is there
    assert f"`python prepare_data.py CIFAR10 --data_root {tiny_mnist[0]}`" in warnings[0]
    assert printed.err.strip().splitlines()[-1] == "40 runs from 40 configs, 1 finished"
