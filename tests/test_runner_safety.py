"""The runner never deletes or retrains a finished run, and says what it cannot do: one run per
directory whatever a config's spelling, no --overwrite, unreadable and edited runs left alone,
tables grouped by the config a run was trained with, grid values that stay distinct, local jobs
judged by their run directory's lock, and messages (exit 2, or 1) instead of tracebacks. No run
trains here: a fake entry script records how it was started."""
import csv
import errno
import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO
from runs import write_results

import ccl.reproduce.cluster as cluster
import ccl.reproduce.runner as runner
from ccl.config import config_yaml
from ccl.figures.cli import main as figures_main
from ccl.reproduce.cli import main
from ccl.reproduce.runner import Run, planned_config
from ccl.run_dir import RunDir

YAML = str(REPO / "yaml/mlp/mnist_ccl.yaml")


@pytest.fixture
def fake(tmp_path):
    """A launcher whose 'entry script' appends its arguments to a file and exits 0 (without a
    result, so the runner counts the run as failed); returns (launcher, the launches so far)."""
    launches = tmp_path / "launches.jsonl"
    script = tmp_path / "fake_run.py"
    script.write_text("import json, sys\n"
                      f"open({str(launches)!r}, 'a').write(json.dumps(sys.argv[2:]) + '\\n')\n")

    def launched():
        return [json.loads(line) for line in launches.read_text().splitlines()] if launches.exists() else []
    return (sys.executable, str(script)), launched


def trained(run: Run, config_file: str | Path = YAML, **results) -> None:
    """A run directory as a finished run leaves it (config.yaml, results.json, best.pt), the
    config as the runner plans it from `config_file`."""
    config = planned_config(Run(Path(config_file), run.seed, run.overrides, run.run_dir))
    run.run_dir.mkdir(parents=True)
    RunDir(run.run_dir).write_config(config_yaml(config, {"script": "main_class_mlp.py"}))
    (run.run_dir / "best.pt").write_bytes(b"weights")
    (run.run_dir / "results.json").write_text(json.dumps(
        {"status": "finished", "wall_seconds": 1.0, "best_epoch": 1, "test_acc": 0.9,
         "dataset": config.dataset, "method": config.method, **results}))


def planned(root, config=YAML, seed=1, **overrides) -> Run:
    return runner.plan_runs([Path(config)], [seed], {"epochs": 1, **overrides}, root)[0]


def test_a_config_under_two_spellings_is_one_run_and_a_finished_one_is_not_started(
        tmp_path, monkeypatch, fake, capsys):
    monkeypatch.chdir(REPO)
    launcher, launched = fake
    root = tmp_path / "runs"
    trained(planned(root))
    stamp = (planned(root).run_dir / "results.json").read_text()
    code = main(["run", "yaml/mlp/mnist_ccl.yaml", YAML, "--seeds", "1", "2", "--epochs", "1",
                 "--runs_root", str(root)], launcher=launcher)
    out = capsys.readouterr().out
    assert code == 1 and "2 runs: 1 already ended (skipped), 0 to resume, 1 to start" in out
    assert len(launched()) == 1 and "--overwrite" not in launched()[0]  # seed 2 once
    assert (planned(root).run_dir / "results.json").read_text() == stamp


def test_two_configs_of_one_name_are_refused(tmp_path, capsys):
    other = tmp_path / "mlp/mnist_ccl.yaml"
    other.parent.mkdir()
    other.write_text(Path(YAML).read_text().replace("lr_F:", "lr_F: 0.5 #"))
    assert main(["run", YAML, str(other), "--seeds", "1", "--runs_root", str(tmp_path / "runs"),
                 "--dry_run"]) == 2
    assert "are different configs of the same name" in capsys.readouterr().err


def test_an_unreadable_results_file_without_checkpoint_is_left_alone(tmp_path, fake, capsys):
    launcher, launched = fake
    run = planned(tmp_path / "runs")
    trained(run)
    (run.run_dir / "results.json").write_text('{"status": "fini')
    code = main(["run", YAML, "--seeds", "1", "--epochs", "1", "--runs_root", str(tmp_path / "runs")],
                launcher=launcher)
    out = capsys.readouterr().out
    assert code == 1 and not launched()
    assert "left alone" in out and "1 unreadable" in out
    assert (run.run_dir / "best.pt").read_bytes() == b"weights"


def test_a_run_of_an_edited_config_is_refused_naming_the_keys(tmp_path, fake, capsys):
    launcher, launched = fake
    config = tmp_path / "mlp/grid.yaml"
    config.parent.mkdir()
    text = Path(YAML).read_text()
    config.write_text(text)
    run = planned(tmp_path / "runs", config)
    trained(run, config)
    config.write_text(text.replace("method: CCL", "method: BP"))
    code = main(["run", str(config), "--seeds", "1", "--epochs", "1", "--runs_root",
                 str(tmp_path / "runs")], launcher=launcher)
    err = capsys.readouterr().err
    assert code == 2 and not launched()
    assert f"{run.run_dir}: method 'CCL' -> 'BP'" in err and "move those run directories away" in err


def test_tables_group_runs_by_the_config_they_were_trained_with(tmp_path, capsys):
    root = tmp_path / "runs"
    config = tmp_path / "mlp/mnist_ccl.yaml"
    config.parent.mkdir()
    text = Path(YAML).read_text()
    for seed, method in ((1, "CCL"), (2, "BP")):
        config.write_text(text.replace("method: CCL", f"method: {method}"))
        trained(planned(root, config, seed, lr_F=0.1), config)
    assert main(["table", "--runs_root", str(root)]) == 0
    printed = capsys.readouterr()
    assert "were trained with 2 different configs (differing in method)" in printed.err
    assert "| MNIST | CCL | mlp/mnist_ccl (epochs=1 lr_F=0.1 method=CCL) | both | 90.00 (n=1) |" in printed.out
    assert "| MNIST | BP | mlp/mnist_ccl (epochs=1 lr_F=0.1 method=BP) | both | 90.00 (n=1) | - |" in printed.out

    assert main(["table", "--grid", "lr_F", "--runs_root", str(root)]) == 0
    written = sorted(Path(path).name for path in capsys.readouterr().out.split())
    assert written == ["grid_lr_F_mlp_mnist_ccl-epochs=1-method=BP.csv",
                       "grid_lr_F_mlp_mnist_ccl-epochs=1-method=CCL.csv"]


def test_grid_values_stay_distinct_in_directories_csv_and_figure(tmp_path, capsys):
    root = tmp_path / "runs"
    for lr_F, acc in (("0.1234567", 0.9), ("0.1234568", 0.8)):
        write_results(root, f"mlp/mnist_ccl-lr_B=0.0-lr_F={lr_F}", 1, test_acc=acc)
    assert main(["table", "--grid", "lr_F", "lr_B", "--runs_root", str(root)]) == 0
    path = Path(capsys.readouterr().out.split()[0])
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [(row["lr_F"], row["lr_B"], row["mean"]) for row in rows] == [
        ("0.1234567", "0", "90.0"), ("0.1234568", "0", "80.0")]
    assert figures_main(["grid", str(path)]) == 0


def test_a_local_job_is_judged_by_its_run_directorys_lock(tmp_path, monkeypatch):
    """Its controller killed, the job's training process goes on: it holds the lock."""
    class NoProcess:
        state = "NO PROCESS AND NO RESULT"
    monkeypatch.setattr("submitit.LocalJob", lambda **_: NoProcess())
    run = planned(tmp_path / "runs")
    record = {"executor": "submitit_local", "job_id": "999999999", "folder": str(tmp_path)}
    assert cluster.job_state(record, run) == "ENDED WITHOUT RESULT"
    with RunDir(run.run_dir).locked():
        assert cluster.job_state(record, run) == "RUNNING"


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "-1"], "--seeds: seed must be"),
    (["--grid", "lr_F=0.1", "lr_B=0.2"], "more than the 30 the file system allows"),
])
def test_bad_plans_exit_2_before_anything_runs(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(runner.os, "pathconf", lambda *_: 30)  # a file system of short names
    assert main(["run", YAML, *argv, "--runs_root", str(tmp_path), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_runs_root_that_cannot_be_written_is_a_message(tmp_path, monkeypatch, fake, capsys):
    launcher, launched = fake
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["run", YAML, "--seeds", "1", "--runs_root", str(a_file)], launcher=launcher) == 2
    assert f"--runs_root {a_file} is a file" in capsys.readouterr().err

    def read_only(*_, **__):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(runner.Path, "mkdir", read_only)
    assert main(["run", YAML, "--seeds", "1", "--runs_root", str(tmp_path / "ro")], launcher=launcher) == 2
    err = capsys.readouterr().err
    assert "is read-only" in err and "Traceback" not in err and not launched()


def test_the_tables_hint_is_quoted_and_names_the_grid(tmp_path, fake, capsys):
    launcher, _ = fake
    root = tmp_path / "my runs"
    main(["run", YAML, "--seeds", "1", "--grid", "lr_F=0.1", "--runs_root", str(root)], launcher=launcher)
    out = capsys.readouterr().out
    assert f"tables: python -m ccl.reproduce table {YAML} --grid lr_F --runs_root '{root}'" in out


@pytest.mark.parametrize("argv, code, message", [
    (["--runs_root", "no/such/dir"], 1, "nothing was found under --runs_root no/such/dir"),
    (["--grid", "method"], 2, "a grid varies numeric keys"),
])
def test_table_says_what_it_cannot_do(argv, code, message, capsys):
    assert main(["table", *argv]) == code
    err = capsys.readouterr().err
    assert message in err and "run --grid method" not in err


def test_table_of_an_empty_runs_root_is_exit_1(tmp_path, capsys):
    assert main(["table", "--runs_root", str(tmp_path)]) == 1
    assert "no run there has ended" in capsys.readouterr().err
