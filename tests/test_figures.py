"""`python -m ccl.figures`: every subcommand writes a readable PNG from tiny run files, and bad
input stops with one line and exit code 2."""
import json
import subprocess
import sys
from functools import partial

import matplotlib.image
import numpy as np
import pytest
import torch
from conftest import REPO

import yaml
from ccl import plots
from ccl.cli import parse_command_line
from ccl.config import config_yaml
from ccl.figures.cli import main as figures_main
from ccl.losses import mlp_pair_loss
from ccl.measures import analyse
from ccl.reproduce.paper import FIGURE7
from ccl.objectives import Classification
from ccl.rules import ccl_loss
from ccl.run_dir import ANALYSIS, BEST, METRICS, RESULTS, RunDir
from models import LayerOptions, mlp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 200_000
LAYERS = [f"layer{index}" for index in range(1, 9)]  # the autoencoder's 8: the largest matrix


def _record(epoch, layers=LAYERS, step=None):
    generator = torch.Generator().manual_seed(epoch if epoch is not None else step)
    count = len(layers)
    cka = torch.rand(count + 1, count + 1, generator=generator).tolist()  # a_0..a_L x b_0..b_L
    cka[-1][0] = None  # undefined values arrive as null
    return {"epoch": epoch, **({} if step is None else {"step": step}), "layers": layers, "cka": cka,
            "weight_cosine": [None] + (torch.rand(count - 1, generator=generator) * 2 - 1).tolist(),
            "grad_angle_deg": (torch.rand(count, generator=generator) * 90).tolist()}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _run(tmp_path, name, *, config="mlp/mnist_ccl", seed=2023, epochs=(0, 1, 2, 5, 7),
         in_channels=3, autoencoder=False):
    """A run directory with the files the figures read."""
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"method": {"method": "CCL"}, "training": {"seed": seed}, "run": {"yaml": f"yaml/{config}.yaml"}}))
    _write_jsonl(run / ANALYSIS, [_record(epoch) for epoch in epochs])
    metrics = [{"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "seconds": 1.0,
                **{f"train_loss_{name}": 0.5 / e for name in ("output", "pair0", "pair1")},
                **({"val_mse": 0.1 / e} if autoencoder else {"val_loss": 2.1 / e, "val_acc": 0.5 + e / 20})}
               for e in range(1, 4)]
    _write_jsonl(run / METRICS, metrics)
    weights = {"layer1.fwd.weight": torch.randn(128, in_channels, 3, 3), "layer1.bwd.weight": torch.randn(3)}
    torch.save(weights, run / BEST)
    (run / RESULTS).write_text(json.dumps({"status": "finished", "best_epoch": 3}))
    return run


def _grid_csv(tmp_path, header="lr_F,lr_B,mean,std,n,extra"):
    path = tmp_path / "grid_mnist.csv"
    rows = [header]
    for lr_F in (0.05, 0.1, 0.2, 0.4, 0.8):
        for lr_B in (0, 0.05, 0.1, 0.2, 0.4, 0.8):
            if (lr_F, lr_B) == (0.8, 0.8):
                continue  # a cell nobody ran
            rows.append(f"{lr_F},{lr_B},{90 + 10 * lr_F - lr_B:.2f},0.1,5,x" if lr_B != 0.4
                        else f"{lr_F},{lr_B},,,0,x")
    path.write_text("\n".join(rows) + "\n")
    return path


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) < MAX_PNG_BYTES, f"{path.name}: {len(data)} bytes"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    return pixels


def _error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("python -m ccl.figures: error: ") and err.count("\n") == 1, err
    return err


# --- every subcommand writes a PNG ---------------------------------------------------------
def test_cka_writes_the_default_epochs_into_the_run_directory(tmp_path):
    run = _run(tmp_path, "ccl")
    assert figures_main(["cka", str(run)]) == 0
    _assert_png(run / "cka.png")


def test_cka_at_chosen_epochs_to_a_chosen_file(tmp_path):
    run = _run(tmp_path, "ccl")
    out = tmp_path / "figures" / "cka_2_7.png"
    assert figures_main(["cka", str(run), "--epochs", "2", "7", "--out", str(out)]) == 0
    _assert_png(out)


def _stepped_run(tmp_path, name, seed, steps=(0, 20, 40, 80, 160)):
    """A run measured at chosen steps (analysis_steps), the last of which ends epoch 1."""
    run = _run(tmp_path, name, config="cnn/mnist_ccl", seed=seed)
    records = [_record(1 if step == steps[-1] else None, LAYERS[:6], step=step) for step in steps]
    _write_jsonl(run / ANALYSIS, records)
    return run, records


def test_cka_of_several_seeds_draws_their_mean_and_its_changes(tmp_path, monkeypatch):
    runs = [_stepped_run(tmp_path, f"seed{seed}", seed) for seed in (1, 2, 3)]
    drawn = {}
    original = plots.cka_figure

    def keep(points, layers, title):
        drawn.update(points=points, layers=layers, title=title)
        return original(points, layers, title)
    monkeypatch.setattr("ccl.figures.cli.cka_figure", keep)
    out = tmp_path / "cka_seeds.png"
    assert figures_main(["cka", *(str(run) for run, _ in runs), "--out", str(out)]) == 0
    _assert_png(out)
    assert [label for label, _ in drawn["points"]] == ["step 0 (initial)", "step 20", "step 40",
                                                        "step 80", "step 160"]
    assert drawn["title"] == "cnn/mnist_ccl, mean of 3 runs (seeds 1, 2, 3)"
    for index, (_, matrix) in enumerate(drawn["points"]):
        expected = np.mean([np.array(records[index]["cka"], dtype=float) for _, records in runs], axis=0)
        np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-15)
        assert matrix.shape == (7, 7)
    assert np.isnan(drawn["points"][0][1][-1][0]), "undefined in one run: undefined in the mean"


def test_cka_at_chosen_steps_and_a_step_that_was_not_measured(tmp_path, capsys):
    (run, _), (other, _) = _stepped_run(tmp_path, "a", 1), _stepped_run(tmp_path, "b", 2, steps=(0, 20))
    assert figures_main(["cka", str(run), "--steps", "0", "160", "--out", str(tmp_path / "x.png")]) == 0
    assert figures_main(["cka", str(run), str(other), "--steps", "0", "40"]) == 2
    assert "has no record of step 40; it has steps 0, 20" in _error_line(capsys)
    assert figures_main(["cka", str(run), "--epochs", "1", "--out", str(tmp_path / "y.png")]) == 0


def test_mean_cka_averages_runs_cell_by_cell():
    first, second = _record(0, LAYERS[:2]), _record(1, LAYERS[:2])
    first["cka"][0][0], second["cka"][0][0] = 0.2, 0.6
    assert plots.mean_cka([first, second])[0][0] == pytest.approx(0.4)
    assert plots.mean_cka([first])[1][1] == first["cka"][1][1]


def test_cka_labels_name_the_input_and_the_target():
    rows, columns = plots.cka_labels(["layer1", "layer2"])
    assert rows == ["a0 input", "a1 layer1", "a2 layer2"]
    assert columns == ["b0 layer1", "b1 layer2", "b2 target"]


def test_default_cka_epochs_are_first_one_five_and_last_where_analysed():
    assert plots.default_cka_epochs([0, 1, 2, 5, 7]) == [0, 1, 5, 7]
    assert plots.default_cka_epochs([0, 2, 4]) == [0, 4]
    assert plots.default_cka_epochs([3]) == [3]


def test_alignment_overlays_runs(tmp_path):
    first, second = _run(tmp_path, "ccl"), _run(tmp_path, "bp", config="mlp/mnist_bp")
    assert figures_main(["alignment", str(first), str(second)]) == 0
    _assert_png(first / "alignment.png")


def test_kernels_of_rgb_and_greyscale_runs(tmp_path):
    rgb, grey = _run(tmp_path, "bp", in_channels=3), _run(tmp_path, "ccl", in_channels=1)
    assert figures_main(["kernels", str(rgb), str(grey)]) == 0
    _assert_png(rgb / "kernels.png")


def test_kernel_mosaic_scales_each_kernel_and_greys_single_channel_kernels():
    weight = torch.randn(10, 1, 3, 3) * torch.arange(1.0, 11.0)[:, None, None, None]
    weight[9] = 4.0  # a constant kernel
    mosaic = plots.kernel_mosaic(weight, count=10)
    assert mosaic.shape == (2 * 4 + 1, plots.KERNEL_COLUMNS * 4 + 1, 3)
    first, constant = mosaic[1:4, 1:4], mosaic[5:8, 5:8]
    assert first.min() == 0.0 and first.max() == 1.0
    assert (first[..., 0] == first[..., 1]).all() and (first[..., 1] == first[..., 2]).all()
    assert (constant == 0.5).all()


@pytest.mark.parametrize("autoencoder", [False, True])
def test_curves_of_classification_and_autoencoder_runs(tmp_path, autoencoder):
    first = _run(tmp_path, "ccl", autoencoder=autoencoder)
    second = _run(tmp_path, "bp", autoencoder=autoencoder, config="mlp/mnist_bp")
    assert figures_main(["curves", str(first), str(second)]) == 0
    _assert_png(first / "curves.png")


def test_curves_draw_each_loss_term_where_a_run_logged_them(tmp_path, monkeypatch):
    ccl, bp = _run(tmp_path, "ccl"), _run(tmp_path, "bp", config="mlp/mnist_bp")
    rows = [{key: value for key, value in json.loads(line).items() if not key.startswith("train_loss_")}
            for line in (bp / METRICS).read_text().splitlines()]
    _write_jsonl(bp / METRICS, rows)
    assert plots.loss_terms(RunDir(ccl).metrics_rows()) == ["output", "pair0", "pair1"]
    assert plots.loss_terms(rows) == []
    figure = plots.curves_figure([("ccl", RunDir(ccl).metrics_rows()), ("bp", rows)])
    assert len(figure.axes) == 3 and len(figure.axes[2].lines) == 3
    assert figures_main(["curves", str(ccl), str(bp)]) == 0
    _assert_png(ccl / "curves.png")


def test_grid_writes_beside_the_csv(tmp_path):
    csv_path = _grid_csv(tmp_path)
    assert figures_main(["grid", str(csv_path), "--title", "MNIST MLP, CCL"]) == 0
    _assert_png(csv_path.with_suffix(".png"))


def test_grid_beside_the_papers_figure_7_draws_the_difference(tmp_path):
    cells = plots.read_grid(_grid_csv(tmp_path))
    figure = plots.grid_figure(cells, "MNIST", FIGURE7["mlp/mnist_ccl"])
    ours, papers, difference = (ax for ax in figure.axes if ax.get_title())
    texts = {ax: [text.get_text() for text in ax.texts] for ax in (ours, papers, difference)}
    assert len(texts[papers]) == 30 and texts[papers][0] == "95.09"  # lr_F 0.05, lr_B 0
    assert texts[difference][0] == f"{90.5 - 95.09:+.2f}"  # the CSV's cell minus the paper's
    assert texts[ours][-1] == "not run" and texts[difference][-1] == "-"  # lr_F 0.8, lr_B 0.8
    assert figures_main(["grid", str(tmp_path / "grid_mnist.csv"), "--paper", "mlp/mnist_ccl"]) == 0
    _assert_png(tmp_path / "grid_mnist.png")


def test_read_grid_parses_cells_and_leaves_empty_means_undefined(tmp_path):
    cells = plots.read_grid(_grid_csv(tmp_path))
    assert len(cells) == 29
    assert cells[0] == {"lr_F": 0.05, "lr_B": 0.0, "mean": 90.5, "std": 0.1, "n": 5}
    unrun = next(cell for cell in cells if cell["lr_B"] == 0.4)
    assert unrun["n"] == 0 and unrun["mean"] != unrun["mean"]


def test_analyse_records_draw_as_they_come(tmp_path):
    """The record of ccl.measures.analyse, with its epoch, is a line of analysis.jsonl."""
    torch.manual_seed(0)
    model = mlp([6, 5, 3], LayerOptions())
    task = Classification(3, partial(mlp_pair_loss, loss_scale_C=1.0), None)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    run = tmp_path / "analysed"
    run.mkdir()
    _write_jsonl(run / ANALYSIS, [{"epoch": 0, **analyse(model, task, ccl_loss, x, y)}])
    assert figures_main(["cka", str(run)]) == 0
    assert figures_main(["alignment", str(run)]) == 0
    _assert_png(run / "cka.png")


def test_titles_name_the_config_and_seed_or_else_the_directory(tmp_path):
    run = _run(tmp_path, "seed2023", config="cnn/cifar10_ccl", seed=7)
    assert plots.run_title(run) == "cnn/cifar10_ccl, seed 7"
    (run / "config.yaml").unlink()
    assert plots.run_title(run) == "seed2023"


# --- bad input -----------------------------------------------------------------------------
def test_cka_of_a_run_without_analysis_records(tmp_path, capsys):
    run = _run(tmp_path, "ccl")
    (run / ANALYSIS).unlink()
    assert figures_main(["cka", str(run)]) == 2
    assert "no analysis.jsonl" in _error_line(capsys)
    (run / ANALYSIS).write_text("\n")
    assert figures_main(["alignment", str(run)]) == 2
    assert "no records" in _error_line(capsys)


def test_cka_of_an_epoch_that_was_not_analysed(tmp_path, capsys):
    run = _run(tmp_path, "ccl")
    assert figures_main(["cka", str(run), "--epochs", "1", "9"]) == 2
    assert "no record of epoch 9; it has epochs 0, 1, 2, 5, 7" in _error_line(capsys)


def test_records_that_are_not_json_or_lack_a_key(tmp_path, capsys):
    run = _run(tmp_path, "ccl")
    (run / ANALYSIS).write_text(json.dumps(_record(0)) + "\n{not json\n")
    assert figures_main(["cka", str(run)]) == 2
    assert "line 2: not JSON" in _error_line(capsys)
    record = _record(0)
    del record["grad_angle_deg"]
    _write_jsonl(run / ANALYSIS, [record])
    assert figures_main(["alignment", str(run)]) == 2
    assert "line 1: no grad_angle_deg" in _error_line(capsys)
    record = _record(0)
    record["cka"] = record["cka"][:-1]
    _write_jsonl(run / ANALYSIS, [record])
    assert figures_main(["cka", str(run)]) == 2
    assert "cka is not 9 x 9" in _error_line(capsys)


def test_missing_run_directory(tmp_path, capsys):
    assert figures_main(["curves", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such run directory" in _error_line(capsys)


def test_kernels_of_a_run_without_weights(tmp_path, capsys):
    bp, ccl = _run(tmp_path, "bp"), _run(tmp_path, "ccl")
    (ccl / BEST).unlink()
    assert figures_main(["kernels", str(bp), str(ccl)]) == 2
    assert "no best.pt" in _error_line(capsys)
    torch.save({"layer2.fwd.weight": torch.zeros(2)}, ccl / BEST)
    assert figures_main(["kernels", str(bp), str(ccl)]) == 2
    assert "no layer1.fwd.weight" in _error_line(capsys)
    torch.save({"layer1.fwd.weight": torch.zeros(4, 784)}, ccl / BEST)
    assert figures_main(["kernels", str(bp), str(ccl)]) == 2
    assert "has shape (4, 784)" in _error_line(capsys)
    for weights, problem in (({"layer1.fwd.weight": "w"}, "'layer1.fwd.weight' is a str, not a tensor"),
                             ([torch.zeros(2)], "it holds a list")):
        torch.save(weights, ccl / BEST)
        assert figures_main(["kernels", str(bp), str(ccl)]) == 2
        assert f"{ccl / BEST} does not hold this run's weights: {problem}" in _error_line(capsys)
    (ccl / BEST).write_bytes(b"not a checkpoint")
    assert figures_main(["kernels", str(bp), str(ccl)]) == 2
    assert "not a readable state dict" in _error_line(capsys)


def test_curves_of_runs_of_two_tasks(tmp_path, capsys):
    classification, autoencoder = _run(tmp_path, "cls"), _run(tmp_path, "ae", autoencoder=True)
    assert figures_main(["curves", str(classification), str(autoencoder)]) == 2
    assert "no val_acc" in _error_line(capsys)


def test_grid_csv_without_a_column_or_with_a_bad_value(tmp_path, capsys):
    csv_path = _grid_csv(tmp_path, header="lr_F,lr_B,mean,sd,n,extra")
    assert figures_main(["grid", str(csv_path)]) == 2
    assert "no column std" in _error_line(capsys)
    csv_path.write_text("lr_F,lr_B,mean,std,n\n0.1,0.1,97.0,0.1,five\n")
    assert figures_main(["grid", str(csv_path)]) == 2
    assert "line 2:" in _error_line(capsys)
    assert figures_main(["grid", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: no such file" in _error_line(capsys)


@pytest.mark.slow
def test_module_entry_point_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ccl.figures", "cka", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("python -m ccl.figures: error:")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["reconstructions", "compare"])
def test_reconstructions_of_a_classification_run(tmp_path, capsys, command):
    run = tmp_path / "run"
    run.mkdir()
    config, _ = parse_command_line(["--yaml", str(REPO / "yaml/mlp/mnist_ccl.yaml")], "main_class_mlp.py",
                                   "", {"task": "classification"})
    (run / "config.yaml").write_text(config_yaml(config, {"script": "main_class_mlp.py"}))
    out = ["--out", str(tmp_path / "x.png")] if command == "compare" else []
    assert figures_main([command, str(run), *out]) == 2
    assert f"{run} is a classification run; {command} draws autoencoder runs" in capsys.readouterr().err


# --- t-SNE ---------------------------------------------------------------------------------
@pytest.fixture
def snapshotted(tiny_mnist, tmp_path):
    """A tiny MLP run that kept its weights at steps 0 and 9."""
    from runs import MLP_YAML, run_mlp
    out = tmp_path / "snapshotted"
    assert run_mlp("--yaml", MLP_YAML, "--data_root", str(tiny_mnist[0]), "--epochs", "1", "--device", "cpu",
                   "--batchsize", "64", "--analysis_steps", "0,9", "--analysis_samples", "8",
                   "--analysis_snapshots", "1", "--out_dir", str(out)) == 0
    return out


@pytest.mark.usefixtures("one_thread")
def test_tsne_draws_one_fit_per_step(snapshotted, tmp_path):
    pytest.importorskip("sklearn", reason="tsne needs scikit-learn (pip install scikit-learn)")
    out = tmp_path / "tsne.png"
    assert figures_main(["tsne", str(snapshotted), "--steps", "0", "9", "--samples", "60", "--layers", "2",
                         "--device", "cpu", "--out", str(out)]) == 0
    _assert_png(out)


@pytest.mark.usefixtures("one_thread")
def test_tsne_draws_the_cifar_cnn_layers_of_figure_8(tiny_cnn_data, tmp_path):
    """The paper's Figure 8 path: layers 1, 3 and 5 of the CIFAR-10 CNN, a row each, on the small
    CIFAR-10 files of the official format."""
    pytest.importorskip("sklearn", reason="tsne needs scikit-learn (pip install scikit-learn)")
    from ccl.experiment import main
    from ccl.scripts import CNN
    run = tmp_path / "cifar10_ccl"
    assert main(CNN, ["--yaml", str(REPO / "yaml/cnn/cifar10_ccl.yaml"), "--data_root", str(tiny_cnn_data[0]),
                      "--epochs", "1", "--batchsize", "8", "--train_batches_per_epoch", "3",
                      "--analysis_steps", "0,3", "--analysis_samples", "4", "--analysis_snapshots", "1",
                      "--device", "cpu", "--out_dir", str(run)]) == 0
    out = tmp_path / "tsne.png"
    assert figures_main(["tsne", str(run), "--layers", "1", "3", "5", "--samples", "20", "--device", "cpu",
                         "--out", str(out)]) == 0
    image = _assert_png(out)
    assert image.shape[0] > image.shape[1] / 2  # three rows of two panels
    assert figures_main(["tsne", str(run), "--layers", "6", "--device", "cpu"]) == 2


def test_tsne_fits_forward_and_feedback_points_together_with_a_fixed_seed():
    pytest.importorskip("sklearn", reason="tsne needs scikit-learn (pip install scikit-learn)")
    generator = np.random.default_rng(0)
    forward, feedback = generator.normal(size=(40, 5)), generator.normal(size=(4, 5))
    first, again = plots.fit_tsne(forward, feedback), plots.fit_tsne(forward, feedback)
    assert first[0].shape == (40, 2) and first[1].shape == (4, 2)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


@pytest.mark.usefixtures("one_thread")
def test_tsne_without_scikit_learn_or_without_snapshots(snapshotted, capsys, monkeypatch):
    assert figures_main(["tsne", str(snapshotted), "--steps", "0", "5", "--device", "cpu"]) == 2
    assert "no weights of step 5" in _error_line(capsys)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails as if not installed
    assert figures_main(["tsne", str(snapshotted), "--steps", "0", "--samples", "20", "--device", "cpu"]) == 2
    assert "pip install scikit-learn" in _error_line(capsys)


def test_runs_of_one_config_and_seed_are_told_apart_by_their_differing_values(tmp_path):
    runs = []
    for name, flags in (("a", ["--lr_B", "0.4"]), ("b", ["--lr_B", "0.8"]), ("c", ["--seed", "7"])):
        config, _ = parse_command_line(["--yaml", str(REPO / "yaml/mlp/mnist_ccl.yaml"), *flags],
                                       "main_class_mlp.py", "", {"task": "classification"})
        runs.append(tmp_path / name)
        runs[-1].mkdir()
        (runs[-1] / "config.yaml").write_text(config_yaml(config, {"script": "main_class_mlp.py",
                                                                   "yaml": "yaml/mlp/mnist_ccl.yaml"}))
    assert plots.run_titles(runs) == ["mlp/mnist_ccl, seed 2023, lr_B 0.4", "mlp/mnist_ccl, seed 2023, lr_B 0.8",
                                      "mlp/mnist_ccl, seed 7"]
