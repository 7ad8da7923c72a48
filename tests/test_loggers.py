"""The opt-in loggers: a logger that is not installed (simulated) stops the run before it starts;
--logger is a run option that a resumed run keeps unless told otherwise; with the real packages
(skipped where they are not installed) TensorBoard and W&B (offline) get what metrics.jsonl and
analysis.jsonl hold, and a resumed run's TensorBoard shows every epoch once."""
import importlib.util
import json
import signal
import sys
import types

import pytest
from runs import MLP_YAML, run_mlp

import yaml
from ccl.cli import parse_command_line
from ccl.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def args(data_root, out, *extra):
    return ["--yaml", MLP_YAML, "--data_root", str(data_root), "--epochs", "2", "--batchsize", "64",
            "--device", "cpu", "--out_dir", str(out), *extra]


@pytest.mark.parametrize("logger, module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_logger_that_is_not_installed_stops_the_run_before_it_starts(
        tiny_mnist, tmp_path, monkeypatch, capsys, logger, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were missing
    out = tmp_path / "run"
    assert run_mlp(*args(tiny_mnist[0], out, "--logger", logger)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"main_class_mlp.py: error: --logger {logger}: the {logger} package is not installed; "
                   f"install it with `pip install {logger}`, or drop --logger {logger}")
    assert not out.exists()


def test_wandb_online_needs_the_api_key_in_the_environment(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", types.ModuleType("wandb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert run_mlp(*args(tiny_mnist[0], tmp_path / "run", "--logger", "wandb")) == 2
    assert "set WANDB_API_KEY in the environment" in capsys.readouterr().err


def fake_wandb(init):
    module = types.ModuleType("wandb")
    module.Settings = lambda **settings: settings
    module.init = init
    return module


def test_wandb_online_without_a_network_stops_at_once_naming_offline_mode(
        tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(lambda **_: pytest.fail("wandb.init was called")))
    monkeypatch.setenv("WANDB_API_KEY", "k")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    reached = []

    def no_network(address, timeout):
        reached.append((address, timeout))
        raise OSError(101, "Network is unreachable")
    monkeypatch.setattr("socket.create_connection", no_network)
    out = tmp_path / "run"
    assert run_mlp(*args(tiny_mnist[0], out, "--logger", "wandb")) == 2
    err = capsys.readouterr().err
    assert reached == [(("api.wandb.ai", 443), 5)]
    assert err.startswith("main_class_mlp.py: error: --logger wandb: the W&B server https://api.wandb.ai "
                          "cannot be reached (OSError: [Errno 101] Network is unreachable)")
    assert "WANDB_MODE=offline" in err and "Traceback" not in err and not out.exists()


def test_a_failing_wandb_init_is_one_message_naming_offline_mode(tiny_mnist, tmp_path, monkeypatch, capsys):
    class CommError(Exception):
        pass

    def init(**_):
        raise CommError("Run initialization has timed out after 90.0 sec.\nPlease try again")
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(init))
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert run_mlp(*args(tiny_mnist[0], tmp_path / "run", "--logger", "wandb")) == 1
    err = capsys.readouterr().err
    assert ("--logger wandb: W&B could not start a run (CommError: Run initialization has timed out "
            "after 90.0 sec. Please try again); set WANDB_MODE=offline") in err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--logger", "none", "tensorboard"], "none means no logger; give it alone"),
    (["--wandb_project", "p"], "--wandb_project name where W&B logs: add --logger wandb"),
    (["--logger", "neptune"], "invalid choice: 'neptune'"),
])
def test_bad_logger_options(extra, message):
    with pytest.raises(Exception, match=message):
        parse_command_line(["--yaml", MLP_YAML, "--device", "cpu", *extra], "main_class_mlp.py", "", {})


def test_a_resumed_run_keeps_its_loggers_unless_told_otherwise(tmp_path):
    run_dir = tmp_path / "run"
    config, options = parse_command_line(
        ["--yaml", MLP_YAML, "--device", "cpu", "--out_dir", str(run_dir), "--logger", "wandb",
         "--wandb_project", "p"], "main_class_mlp.py", "", {})
    run_dir.mkdir()
    sections = {**config.sections(), "run": {"script": "main_class_mlp.py", **options.as_dict()}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(sections))

    def resumed(*extra):
        return parse_command_line(["--resume", str(run_dir), *extra], "main_class_mlp.py", "", {})[1]
    kept = resumed()
    assert (kept.loggers, kept.wandb_project, kept.run_id) == (("wandb",), "p", options.run_id)
    assert resumed("--logger", "none").loggers == ()
    assert resumed("--logger", "tensorboard").loggers == ("tensorboard",)


def installed(module):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


def stop_after_first_epoch(monkeypatch):
    finish_epoch = Trainer._finish_epoch

    def finish_epoch_then_stop(self):  # as if SIGTERM came during epoch 1
        finish_epoch(self)
        self.stop.signal_number = signal.SIGTERM
    monkeypatch.setattr(Trainer, "_finish_epoch", finish_epoch_then_stop)


def scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


@installed("tensorboard")
def test_tensorboard_mirrors_the_run_files_across_a_resume(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        stop_after_first_epoch(patch)
        assert run_mlp(*args(tiny_mnist[0], out, "--analysis_every", "1", "--logger", "tensorboard")) == 143
    assert run_mlp("--resume", str(out)) == 0  # the run's logger, by default

    logged = scalars(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (out / "analysis.jsonl").read_text().splitlines()]
    assert [step for step, _ in logged["val_acc"]] == [1, 2]  # each epoch once, after the resume
    assert [value for _, value in logged["val_acc"]] == pytest.approx([row["val_acc"] for row in rows])
    assert [step for step, _ in logged["weight_cosine/layer1"]] == [0, 1, 2]
    assert [value for _, value in logged["cka/a6_b0"]] == pytest.approx([r["cka"][6][0] for r in records])
    results = json.loads((out / "results.json").read_text())
    assert logged["test_acc"] == [(2, pytest.approx(results["test_acc"]))]


@installed("wandb")
def test_wandb_offline_logs_into_the_run_directory(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        stop_after_first_epoch(patch)
        assert run_mlp(*args(tiny_mnist[0], out, "--analysis_every", "1", "--logger", "wandb")) == 143
    assert run_mlp("--resume", str(out)) == 0
    run_id = yaml.safe_load((out / "config.yaml").read_text())["run"]["id"]
    offline = list((out / "wandb").glob(f"offline-run-*-{run_id}"))  # both processes: one id
    assert offline and all(list(run.glob("*.wandb")) for run in offline)
