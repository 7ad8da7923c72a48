"""Every shell command of README.md and docs/*.md runs as written, shortened, or is excused.

A documented command is a line of a ```bash block (continuation lines joined, trailing comments
and `&&` chains split) or an inline `python ...` span. Each is either in SHORTENED, run here in
a scratch directory that holds tiny datasets in the official formats under data/ and the
repository's yaml/ (so the command's own paths work) with the words of SHORTENED appended (one
epoch of two batches, --dry_run, --quick), or in NOT_RUN with the reason it cannot run in the
test suite. A new command in the docs that is in neither fails `test_every_documented_command_
is_run_or_excused`; a stale entry fails it too.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import REPO, accept_test_files
from tiny_data import write_cifar10, write_cifar100, write_idx_dataset, write_stl10

import ccl.experiment as experiment
import models.autoencoder
from ccl.analysis.cli import main as analysis_main
from ccl.bench.cli import main as bench_main
from ccl.figures.cli import main as figures_main
from ccl.reproduce.cli import main as reproduce_main
from ccl.scripts import AUTOENCODER, CNN, MLP
from utils.data.prepare import main as prepare_main

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAM = re.compile(r"(python3?|torchrun|pip|bash|nohup|OMP_NUM_THREADS=\d+|CCL_TEST_COMPILE=1)\b")

EPOCH = "--epochs 1 --train_batches_per_epoch 2 --device cpu"
CNN_EPOCH = f"{EPOCH} --batchsize 8"
AE_EPOCH = "--epochs 1 --train_batches_per_epoch 1 --batchsize 2 --device cpu"
RUNNER_EPOCH = "--seeds 2023 --epochs 1 --train_batches_per_epoch 2 --devices cpu"

# documented command -> the words appended to run it here, in this order (later commands read
# what earlier ones wrote, e.g. the tables and figures read the runs). A grid is shortened to one
# of its cells (a second --grid replaces the first), so its run directories keep their names.
ONE_CELL = "--grid lr_F=0.8 lr_B=0 --seeds 2023"
SHORTENED = {
    "python prepare_data.py MNIST": "",
    "python prepare_data.py MNIST FashionMNIST": "",
    "python prepare_data.py CIFAR10 CIFAR100 STL10": "",
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --epochs 2": EPOCH,
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml": EPOCH,
    "python main_class_mlp.py --yaml yaml/mlp/fmnist_bp.yaml --seed 2024": EPOCH,
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --lr_F 0.5 --lr_B 0.2 --loss_scale_C 1": EPOCH,
    "python main_class_mlp.py --yaml yaml/mlp/mnist_fa.yaml": EPOCH,
    "python main_class_mlp.py --help": "",
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --data_root data --device cpu --epochs 3": EPOCH,
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --data_root data --device cpu --epochs 3 "
    "--precision bf16": EPOCH,
    "python main_class_cnn.py --yaml yaml/cnn/cifar10_ccl.yaml": CNN_EPOCH,
    "python main_class_cnn.py --yaml yaml/cnn/cifar10_bp_pool.yaml": CNN_EPOCH,
    "python main_class_cnn.py --yaml yaml/cnn/mnist_ccl.yaml --data_root data --device cpu --epochs 5": CNN_EPOCH,
    "python main_class_cnn.py --yaml yaml/cnn/mnist_ccl.yaml --data_root data --device cpu --epochs 5 "
    "--fused_pair_loss 1": CNN_EPOCH,
    "python main_ae.py --yaml yaml/cnn_ae/stl10_ccl_legacy.yaml": AE_EPOCH,
    "python main_ae.py --yaml yaml/cnn_ae/stl10_ccl_legacy.yaml --task_transform rot90": AE_EPOCH,
    # docs/ANALYSES.md: the analysed runs, their figures and the analysis of their best models
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --epochs 20 --analysis_every 1 --data_root data "
    "--device cpu --out_dir runs/analyses/mlp_mnist_ccl": EPOCH,
    "python main_class_mlp.py --yaml yaml/mlp/mnist_bp.yaml --epochs 20 --analysis_every 1 --data_root data "
    "--device cpu --out_dir runs/analyses/mlp_mnist_bp": EPOCH,
    "python -m ccl.figures cka runs/analyses/mlp_mnist_ccl --out runs/analyses/figures/mlp_mnist_ccl_cka.png": "",
    "python -m ccl.figures cka runs/analyses/mlp_mnist_bp --out runs/analyses/figures/mlp_mnist_bp_cka.png": "",
    "python -m ccl.figures alignment runs/analyses/mlp_mnist_ccl runs/analyses/mlp_mnist_bp "
    "--out runs/analyses/figures/mlp_mnist_alignment.png": "",
    "python -m ccl.figures curves runs/analyses/mlp_mnist_ccl runs/analyses/mlp_mnist_bp "
    "--out runs/analyses/figures/mlp_mnist_curves.png": "",
    "python -m ccl.analysis runs/analyses/mlp_mnist_ccl --device cpu --data_root data": "",
    "python -m ccl.analysis runs/analyses/mlp_mnist_bp --device cpu --data_root data": "",
    "python main_class_cnn.py --yaml yaml/cnn/mnist_ccl.yaml --epochs 5 --analysis_every 1 --data_root data "
    "--device cpu --out_dir runs/analyses/cnn_mnist_ccl": CNN_EPOCH,
    "python main_class_cnn.py --yaml yaml/cnn/mnist_bp.yaml --epochs 5 --analysis_every 1 --data_root data "
    "--device cpu --out_dir runs/analyses/cnn_mnist_bp": CNN_EPOCH,
    "python -m ccl.figures kernels runs/analyses/cnn_mnist_bp runs/analyses/cnn_mnist_ccl "
    "--out runs/analyses/figures/cnn_mnist_kernels.png": "",
    "python -m ccl.figures cka runs/analyses/cnn_mnist_ccl --out runs/analyses/figures/cnn_mnist_ccl_cka.png": "",
    "python -m ccl.figures cka runs/analyses/cnn_mnist_bp --out runs/analyses/figures/cnn_mnist_bp_cka.png": "",
    "python -m ccl.figures alignment runs/analyses/cnn_mnist_ccl runs/analyses/cnn_mnist_bp "
    "--out runs/analyses/figures/cnn_mnist_alignment.png": "",
    "python -m ccl.analysis runs/analyses/cnn_mnist_bp --device cpu --data_root data": "",
    "python -m ccl.analysis runs/analyses/cnn_mnist_ccl --device cpu --data_root data": "",
    "python -m ccl.reproduce run yaml/mlp/mnist_ccl.yaml --grid lr_F=0.05,0.1,0.2,0.4,0.8 "
    "lr_B=0,0.05,0.1,0.2,0.4,0.8 --seeds 2023 2024 2025 --epochs 20 --jobs 1 --threads 1 --devices cpu "
    "--data_root data --runs_root runs/grid": ONE_CELL,
    "python -m ccl.reproduce table yaml/mlp/mnist_ccl.yaml --grid lr_F lr_B --runs_root runs/grid": "",
    "python -m ccl.reproduce run yaml/mlp/mnist_ccl.yaml --grid lr_F=0.05,0.1,0.2,0.4,0.8 "
    "lr_B=0,0.05,0.1,0.2,0.4,0.8 --seeds 2023 2024 --jobs 1 --threads 1 --devices cpu --data_root data "
    "--runs_root runs/grid100": ONE_CELL,  # 100 epochs of one tiny batch: the table keeps its name
    "python -m ccl.reproduce table yaml/mlp/mnist_ccl.yaml --grid lr_F lr_B --runs_root runs/grid100": "",
    "python -m ccl.figures grid runs/grid100/tables/grid_lr_F_lr_B_mlp_mnist_ccl.csv --paper mlp/mnist_ccl "
    '--title "mlp/mnist_ccl, 100 epochs, seeds 2023 and 2024" --out runs/analyses/figures/mlp_mnist_ccl_lr_grid_100epochs.png':
        "",
    'python -m ccl.figures grid "runs/grid/tables/grid_lr_F_lr_B_mlp_mnist_ccl-epochs=20.csv" --title '
    '"mlp/mnist_ccl, 20 epochs (shortened from 100), seeds 2023-2025" --out runs/analyses/figures/mlp_mnist_ccl_lr_grid.png': "",
    'python -m ccl.analysis "runs/grid/mlp/mnist_ccl-epochs=20-lr_B=0.0-lr_F=0.8/seed2023" --device cpu '
    '--data_root data': "",
    # docs/ANALYSES.md: the paper's Figure 6 (CKA over 160 steps) and Figure 3 (t-SNE)
    "python -m ccl.reproduce run yaml/cnn/mnist_ccl_fig6.yaml --augment 1 --loss_scale_C 0.5 --seeds 2023 2024 "
    "2025 2026 2027 --procedure fixed --jobs 1 --threads 1 --devices cpu --data_root data --runs_root runs/fig6":
        "--dry_run",
    "python -m ccl.reproduce run yaml/cnn/mnist_bp_fig6.yaml --augment 1 --seeds 2023 2024 2025 2026 2027 "
    "--procedure fixed --jobs 1 --threads 1 --devices cpu --data_root data --runs_root runs/fig6": "--dry_run",
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --epochs 5 --analysis_steps 0,10,100,1000 "
    "--analysis_split test --analysis_samples 500 --analysis_snapshots 1 --data_root data --device cpu "
    "--out_dir runs/fig3/mlp_mnist_ccl": EPOCH,
    # docs/ANALYSES.md: the search for Figure 6's regime
    "python -m ccl.reproduce run yaml/cnn/mnist_ccl.yaml --grid warmup=0,100 grad_clip_F=0,1 --batchsize 32 "
    "--epochs 1 --train_batches_per_epoch 160 --seeds 2023 --jobs 2 --threads 1 --devices cpu --data_root data "
    "--runs_root runs/cnn160": "--dry_run",
    "python -m ccl.reproduce run yaml/cnn/mnist_ccl.yaml --grid lr_F=3,10 lr_B=1,3 --warmup 0 --batchsize 32 "
    "--epochs 1 --train_batches_per_epoch 160 --seeds 2023 --jobs 2 --threads 1 --devices cpu --data_root data "
    "--runs_root runs/cnn160": "--dry_run",
    "python -m ccl.reproduce run yaml/cnn/mnist_ccl.yaml --grid lr_F=1,3 --architecture cnn_pool --warmup 0 "
    "--batchsize 32 --epochs 1 --train_batches_per_epoch 160 --seeds 2023 --jobs 2 --threads 1 --devices cpu "
    "--data_root data --runs_root runs/cnn160": "--dry_run",
    "python -m ccl.reproduce run yaml/cnn/mnist_ccl.yaml --grid warmup=0,100 loss_scale_C=0.5,2,5,10 --augment 0 "
    "--batchsize 32 --epochs 1 --train_batches_per_epoch 160 --seeds 2023 --jobs 1 --threads 1 --devices cpu "
    "--data_root data --runs_root runs/cnn160": "--grid warmup=0 loss_scale_C=10 --batchsize 8 --train_batches_per_epoch 2",
    "python -m ccl.reproduce run yaml/cnn/mnist_ccl.yaml --grid warmup=0,100 loss_scale_C=0.5,2,5,10 --augment 1 "
    "--batchsize 32 --epochs 1 --train_batches_per_epoch 160 --seeds 2023 --jobs 1 --threads 1 --devices cpu "
    "--data_root data --runs_root runs/cnn160": "--dry_run",
    "python -m ccl.reproduce run yaml/cnn/mnist_ccl.yaml --grid loss_scale_ssl=0 --augment 0 --batchsize 32 "
    "--epochs 1 --train_batches_per_epoch 160 --seeds 2023 --jobs 1 --threads 1 --devices cpu --data_root data "
    "--runs_root runs/cnn160": "--dry_run",
    "python -m ccl.reproduce table yaml/cnn/mnist_ccl.yaml --grid warmup loss_scale_C --split val "
    "--runs_root runs/cnn160": "",
    "python -m ccl.reproduce run yaml/cnn/mnist_ccl_fig6.yaml yaml/cnn/mnist_bp_fig6.yaml --seeds 2023 2024 2025 "
    "2026 2027 --procedure fixed --jobs 1 --threads 1 --devices cpu --data_root data --runs_root runs/fig6":
        "--dry_run",
    # docs/ANALYSES.md: the per-pair losses and the paper's Figure 9
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --epochs 100 --analysis_every 1 --analysis_steps "
    "0,1,2,5,10,20,50,100,200,500,1000,2000,3000,5000,10000,20000 --data_root data --device cpu --out_dir "
    "runs/fig9/mlp_mnist_ccl": EPOCH,
    "python -m ccl.figures curves runs/fig9/mlp_mnist_ccl --out runs/analyses/figures/mlp_mnist_ccl_pair_losses.png": "",
    "python -m ccl.figures alignment runs/fig9/mlp_mnist_ccl "
    "--out runs/analyses/figures/mlp_mnist_ccl_alignment_100epochs.png": "",
    # docs/REPRODUCTION.md and README: the runner and the tables
    "python -m ccl.reproduce run --table table1 --data_root data": "--dry_run",
    "python -m ccl.reproduce run yaml/mlp/mnist_bp.yaml yaml/mlp/mnist_ccl.yaml yaml/mlp/fmnist_bp.yaml "
    "yaml/mlp/fmnist_ccl.yaml --data_root data --devices cpu --jobs 2": "--dry_run",
    "python -m ccl.reproduce run yaml/mlp/mnist_fa.yaml yaml/mlp/mnist_dfa.yaml yaml/mlp/mnist_drtp.yaml "
    "yaml/mlp/fmnist_fa.yaml yaml/mlp/fmnist_dfa.yaml yaml/mlp/fmnist_drtp.yaml --data_root data --devices cpu "
    "--jobs 2": "--dry_run",
    "python -m ccl.reproduce run yaml/mlp/cifar10_bp.yaml yaml/mlp/cifar10_ccl.yaml yaml/mlp/cifar100_bp.yaml "
    "yaml/mlp/cifar100_ccl.yaml --data_root data": f"{RUNNER_EPOCH} --dry_run",
    "python -m ccl.reproduce run yaml/mlp/mnist_ccl.yaml yaml/mlp/mnist_bp.yaml --seeds 2023 2024 "
    "--epochs 1 --jobs 2 --devices cpu --data_root data": "--train_batches_per_epoch 2",
    "python -m ccl.reproduce run yaml/mlp/mnist_bp.yaml yaml/mlp/mnist_fa.yaml yaml/mlp/mnist_dfa.yaml "
    "yaml/mlp/mnist_drtp.yaml yaml/mlp/fmnist_bp.yaml yaml/mlp/fmnist_fa.yaml yaml/mlp/fmnist_dfa.yaml "
    "yaml/mlp/fmnist_drtp.yaml --grid lr_F=0.03,0.1,0.3,1 --seeds 2023 --epochs 10 --threads 1 --devices cpu "
    "--data_root data --runs_root runs/sweep": "--dry_run",
    "python -m ccl.reproduce run yaml/mlp/mnist_drtp.yaml --act_F elu --grid lr_F=0.03,0.1,0.3,1 --seeds 2023 "
    "--epochs 10 --threads 1 --devices cpu --data_root data --runs_root runs/sweep": "--grid lr_F=1",
    "python -m ccl.reproduce table --grid lr_F --split val --runs_root runs/sweep": "",
    "python -m ccl.reproduce run yaml/mlp/mnist_dtp.yaml yaml/mlp/mnist_drl.yaml yaml/mlp/mnist_ldrl.yaml "
    "yaml/mlp/mnist_fwdtp.yaml yaml/mlp/mnist_fwdtp_bn.yaml --grid lr_F=0.3,1,3 tp_step_size=0.001,0.01,0.1 "
    "--seeds 2023 --epochs 3 --data_root data --runs_root runs/tp_sweep":
        "--grid lr_F=3 tp_step_size=0.1 --epochs 1 --train_batches_per_epoch 2 --devices cpu",
    "python -m ccl.reproduce table yaml/mlp/mnist_dtp.yaml yaml/mlp/mnist_drl.yaml yaml/mlp/mnist_ldrl.yaml "
    "yaml/mlp/mnist_fwdtp.yaml yaml/mlp/mnist_fwdtp_bn.yaml --grid lr_F tp_step_size --split val "
    "--runs_root runs/tp_sweep": "",
    "python -m ccl.reproduce table": "",
    "python -m ccl.reproduce table --select all": "",
    # the benchmark, on the CPU
    "python -m ccl.bench --device cpu --data_root data --json runs/bench_cpu.json":
        "--quick --archs mlp_mnist cnn_pool",
    "python -m ccl.bench --device cpu --archs cnn cnn_pool --no_pipeline --fused_pair_loss 1 --profile": "--quick",
    "python -m ccl.bench --flops --device cpu --json runs/flops.json": "--archs mlp_mnist",
    "python -m ccl.bench --tp --device cpu --threads 1": "--quick",
    "python -m ccl.reproduce run yaml/mlp/mnist_drl.yaml yaml/mlp/fmnist_drl.yaml yaml/mlp/mnist_ldrl.yaml "
    "yaml/mlp/fmnist_ldrl.yaml yaml/mlp/mnist_dtp.yaml yaml/mlp/fmnist_dtp.yaml yaml/mlp/mnist_fwdtp_bn.yaml "
    "yaml/mlp/fmnist_fwdtp_bn.yaml --seeds 2023 2024 2025 --epochs 5 --threads 1 --devices cpu --data_root data "
    "--runs_root runs/shortened": "--seeds 2023 --epochs 1 --train_batches_per_epoch 2",
    "python -m ccl.reproduce run yaml/mlp/mnist_fwdtp.yaml yaml/mlp/fmnist_fwdtp.yaml --threads 1 --devices cpu "
    "--data_root data": "--dry_run",
    "python -m ccl.reproduce table --runs_root runs/shortened": "",
}

NEEDS_CUDA = "needs a CUDA GPU (tests/test_cuda.py runs the CUDA paths where one is)"
COMPILES = "compiles for minutes on a CPU (tests/test_acceleration.py covers compile: CCL_TEST_COMPILE=1)"
PROSE = "names a program (or a template of its command) in prose; its commands run above"
TORCHRUN = "starts several processes; tests/test_distributed.py runs 2-process runs of the same kind"
SLURM = "needs a Slurm cluster (sbatch); tests/test_cluster.py runs sweeps through submitit's local executor"
CIFAR_GRID = ("the CIFAR-10 MLP's checkpoints of 40 MB take half a minute even on tiny files; "
              "the same three commands run above on MNIST")
SKLEARN = ("needs scikit-learn, an optional dependency; tests/test_figures.py draws tsne from a tiny "
           "run where it is installed")
FIGURE8 = ("reads CIFAR-10, which the test data has only in tests/test_figures.py: "
           "test_tsne_draws_the_cifar_cnn_layers_of_figure_8 runs the same two commands, shortened")
FIG6_RUNS = ("draws the five 160-step runs that the command before it only plans here (--dry_run); "
             "tests/test_figures.py draws cka over several runs' step records")
NOT_RUN = {
    'OMP_NUM_THREADS=1 python -c "import time, numpy as np; from ccl.plots import fit_tsne; g = '
    "np.random.default_rng(0); t = time.perf_counter(); fit_tsne(g.normal(size=(1000, 32768)), "
    'g.normal(size=(10, 32768))); print(time.perf_counter() - t)"':
        "times one t-SNE fit on random points (10 s); tests/test_figures.py tests fit_tsne",
    "python -m ccl.figures cka runs/fig6/cnn/mnist_ccl_fig6-augment=1-loss_scale_C=0.5/seed2023 "
    "runs/fig6/cnn/mnist_ccl_fig6-augment=1-loss_scale_C=0.5/seed2024 runs/fig6/cnn/mnist_ccl_fig6-augment=1-loss_scale_C=0.5/seed2025 "
    "runs/fig6/cnn/mnist_ccl_fig6-augment=1-loss_scale_C=0.5/seed2026 runs/fig6/cnn/mnist_ccl_fig6-augment=1-loss_scale_C=0.5/seed2027 "
    "--out runs/analyses/figures/cnn_mnist_ccl_cka_160steps.png": FIG6_RUNS,
    "python -m ccl.figures cka runs/fig6/cnn/mnist_bp_fig6-augment=1/seed2023 runs/fig6/cnn/mnist_bp_fig6-augment=1/seed2024 "
    "runs/fig6/cnn/mnist_bp_fig6-augment=1/seed2025 runs/fig6/cnn/mnist_bp_fig6-augment=1/seed2026 "
    "runs/fig6/cnn/mnist_bp_fig6-augment=1/seed2027 --out runs/analyses/figures/cnn_mnist_bp_cka_160steps.png": FIG6_RUNS,
    "python -m ccl.figures cka runs/fig6/cnn/mnist_ccl_fig6/seed2023 runs/fig6/cnn/mnist_ccl_fig6/seed2024 "
    "runs/fig6/cnn/mnist_ccl_fig6/seed2025 runs/fig6/cnn/mnist_ccl_fig6/seed2026 runs/fig6/cnn/mnist_ccl_fig6/seed2027 "
    "--out runs/analyses/figures/cnn_mnist_ccl_fig6_cka.png": FIG6_RUNS,
    "python -m ccl.figures cka runs/fig6/cnn/mnist_bp_fig6/seed2023 runs/fig6/cnn/mnist_bp_fig6/seed2024 "
    "runs/fig6/cnn/mnist_bp_fig6/seed2025 runs/fig6/cnn/mnist_bp_fig6/seed2026 runs/fig6/cnn/mnist_bp_fig6/seed2027 "
    "--out runs/analyses/figures/cnn_mnist_bp_fig6_cka.png": FIG6_RUNS,
    'python -m ccl.figures curves "runs/grid100/mlp/mnist_ccl-lr_B=0.4-lr_F=0.8/seed2023" '
    '"runs/grid100/mlp/mnist_ccl-lr_B=0.8-lr_F=0.8/seed2023" --out runs/analyses/figures/mlp_mnist_ccl_pair0_lr_B.png':
        "reads two cells of the 100-epoch grid, which this test shortens to one; tests/test_figures.py draws "
        "curves of two runs",
    "python main_class_cnn.py --yaml yaml/cnn/cifar10_ccl.yaml --epochs 9 --analysis_steps 0,10,100,1000,3000 "
    "--analysis_split test --analysis_samples 500 --analysis_snapshots 1 --data_root data --out_dir "
    "runs/fig8/cnn_cifar10_ccl": FIGURE8,
    "python -m ccl.figures tsne runs/fig8/cnn_cifar10_ccl --steps 0 100 1000 3000 --layers 1 3 5 --samples 1000 "
    "--data_root data --out runs/analyses/figures/cnn_cifar10_ccl_tsne.png": FIGURE8,
    "python -m ccl.figures tsne runs/fig3/mlp_mnist_ccl --steps 0 10 100 1000 --samples 1000 --data_root data "
    "--device cpu --out runs/analyses/figures/mlp_mnist_ccl_tsne.png": SKLEARN,
    "pip install scikit-learn": "installs a package (the optional dependency of ccl.figures tsne)",
    "python -m ccl.reproduce run yaml/mlp/cifar10_ccl.yaml --grid lr_F=0.05,0.1,0.2,0.4,0.8 "
    "lr_B=0,0.05,0.1,0.2,0.4,0.8 --seeds 2023 --data_root data --runs_root runs/grid100": CIFAR_GRID,
    "python -m ccl.reproduce table yaml/mlp/cifar10_ccl.yaml --grid lr_F lr_B --runs_root runs/grid100": CIFAR_GRID,
    "python -m ccl.figures grid runs/grid100/tables/grid_lr_F_lr_B_mlp_cifar10_ccl.csv --paper mlp/cifar10_ccl "
    '--title "CIFAR-10 MLP, CCL, 100 epochs"': CIFAR_GRID,
    "pip install -r requirements.txt": "installs packages: CI runs it before the tests",
    "pip install -r requirements-dev.txt": "installs packages: CI runs it before the tests",
    "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu":
        "installs packages (PyTorch's CPU build; CI installs the requirements)",
    "pip install": PROSE,
    "cp runs/analyses/figures/*.png docs/figures/":
        "replaces the repository's committed figures (the commands that draw them run above)",
    "python -m pytest": "is this test suite",
    'python -m pytest -m "not slow"': "is this test suite's fast lane",
    "python main_class_mlp.py --resume RUN_DIR": PROSE,
    "python -m ccl.bench": PROSE,
    "python -m ccl.bench --flops": PROSE,
    "python -m ccl.bench --tp": PROSE,
    "python -m ccl.reproduce run": PROSE,
    "python -m ccl.reproduce run CONFIG --grid lr_F=... lr_B=...": PROSE,
    "python -m ccl.reproduce table --select": PROSE,
    "python -m ccl.reproduce run --table ...": PROSE,
    "python -m ccl.reproduce run --table table1": PROSE,
    "python -m ccl.reproduce.job": PROSE,
    "python -m ccl.analysis RUN_DIR": PROSE,
    "python -m ccl.figures": PROSE,
    "python -m ccl.figures reconstructions": PROSE,
    "python -m ccl.figures COMMAND RUN_DIR": PROSE,
    "python -m ccl.figures grid CSV": PROSE,
    "python -m ccl.figures tsne": PROSE,
    "python -m ccl.bench.scaling CONFIG... --processes 2": PROSE,
    "python -m torch.distributed.run": PROSE,
    "OMP_NUM_THREADS=1 python -m ccl.bench.scaling ... --device cpu": PROSE,
    "torchrun": PROSE,
    "python -m ccl.figures compare runs/cnn_ae/stl10_bp_legacy/seed2023 runs/cnn_ae/stl10_ccl_legacy/seed2023 "
    "--out runs/bp_vs_ccl.png": "draws two full STL-10 runs; tests/test_e2e_ae.py draws compare from tiny runs",
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --data_root data --device cpu --epochs 3 "
    "--compile 1": COMPILES,
    "python -m ccl.bench --device cuda --json runs/bench.json": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --profile": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --epoch yaml/cnn/cifar10_ccl.yaml": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --numerics --precision bf16": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --data_root data --json runs/bench_h100.json": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --no_pipeline --compile 1 --json runs/bench_h100_compile1.json": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --no_pipeline --precision bf16 --json runs/bench_h100_bf16.json": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --no_pipeline --archs cnn cnn_pool --fused_pair_loss 1 --profile "
    "--json runs/bench_h100_fused.json": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --no_pipeline --profile --archs mlp_mnist cnn_pool": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --epoch yaml/cnn/cifar10_ccl.yaml --json runs/epoch_h100.json": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --numerics --compile 1 --archs mlp_mnist mlp_cifar10 cnn cnn_pool": NEEDS_CUDA,
    "python -m ccl.bench --device cuda --numerics --precision bf16 --archs mlp_mnist mlp_cifar10 cnn cnn_pool":
        NEEDS_CUDA,
    "python -m ccl.bench --device cuda --numerics --fused_pair_loss 1 --archs cnn cnn_pool": NEEDS_CUDA,
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --data_root data --epochs 3 --device cuda": NEEDS_CUDA,
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --data_root data --epochs 3 --device cuda "
    "--compile 1": NEEDS_CUDA,
    "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --data_root data --epochs 3 --device cuda "
    "--precision bf16": NEEDS_CUDA,
    "python main_class_cnn.py --yaml yaml/cnn/mnist_ccl.yaml --data_root data --epochs 3 --device cuda": NEEDS_CUDA,
    "python main_class_cnn.py --yaml yaml/cnn/mnist_ccl.yaml --data_root data --epochs 3 --device cuda "
    "--compile 1": NEEDS_CUDA,
    "python main_class_cnn.py --yaml yaml/cnn/mnist_ccl.yaml --data_root data --epochs 3 --device cuda "
    "--precision bf16": NEEDS_CUDA,
    "python -m ccl.bench --device cpu --numerics --compile 1 --archs mlp_mnist mlp_cifar10 cnn cnn_pool": COMPILES,
    "python -m ccl.bench --device cpu --numerics --precision bf16 --archs mlp_mnist mlp_cifar10 cnn cnn_pool":
        "ten steps of every architecture in bfloat16 on a CPU without native bfloat16 (minutes); "
        "tests/test_bench.py runs --numerics --quick",
    "python -m ccl.bench --device cpu --numerics --fused_pair_loss 1 --archs cnn cnn_pool":
        "ten full-size CNN steps (a minute); tests/test_bench.py runs --numerics --quick",
    "CCL_TEST_COMPILE=1 python -m pytest tests/test_cuda.py tests/test_acceleration.py tests/test_bench.py":
        "runs tests of this suite with compilation on (minutes on a CPU)",
    "python -m ccl.reproduce run --table table3 --data_root data --devices cuda:0 --jobs 2": NEEDS_CUDA,
    "python -m ccl.reproduce run yaml/cnn/cifar10_bp.yaml yaml/cnn/cifar10_ccl.yaml yaml/cnn/cifar100_bp.yaml "
    "yaml/cnn/cifar100_ccl.yaml --data_root data --devices cuda:0 --jobs 2": NEEDS_CUDA,
    "python -m ccl.reproduce run --table autoencoder --data_root data --devices cuda:0": NEEDS_CUDA,
    "torchrun --standalone --nproc_per_node 4 main_class_cnn.py --yaml yaml/cnn/cifar10_ccl.yaml": NEEDS_CUDA,
    "torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 --rdzv_id ccl "
    "main_class_cnn.py --yaml yaml/cnn/cifar10_ccl.yaml --out_dir /shared/runs/cifar10_ccl":
        "needs two GPU nodes (a template: HOST)",
    "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml "
    "--device cpu": TORCHRUN,
    "torchrun --standalone --nproc_per_node 4 main_class_cnn.py --resume runs/cnn/cifar10_ccl/seed2023": NEEDS_CUDA,
    "python -m ccl.bench.scaling yaml/cnn/cifar10_ccl.yaml --processes 2 --device cuda --sizes 45000 5000 "
    "10000 --epochs 2": NEEDS_CUDA,
    "python -m ccl.reproduce run --table table1 --executor slurm --slurm_partition gpu --slurm_gpus_per_job 1 "
    "--slurm_cpus_per_job 4 --slurm_time 240 --slurm_array_parallelism 40": SLURM,
    "python -m ccl.reproduce run --table table1 --executor slurm --slurm_partition gpu --dry_run": SLURM,
}


def documented_commands() -> dict[str, str]:
    """{command: the document it is in} for every command of the docs."""
    found = {}
    for path in DOCUMENTS:
        text = path.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                for part in _without_comment(line).split("&&"):
                    if part.strip():
                        found.setdefault(" ".join(part.split()), path.name)
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            if PROGRAM.match(span):
                found.setdefault(" ".join(span.split()), path.name)
    return found


def _without_comment(line: str) -> str:
    return re.sub(r"(^|\s)#\s.*$", "", line)


def test_every_documented_command_is_run_or_excused():
    documented = documented_commands()
    listed = set(SHORTENED) | set(NOT_RUN)
    unknown = {command: where for command, where in documented.items() if command not in listed}
    assert not unknown, ("commands in the docs that this test neither runs nor excuses (add each to "
                         f"SHORTENED or NOT_RUN): {unknown}")
    stale = listed - set(documented)
    assert not stale, f"entries for commands no longer in the docs: {sorted(stale)}"
    assert not set(SHORTENED) & set(NOT_RUN)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory to run the commands in: tiny datasets under data/, the repository's yaml/,
    and the loaders accepting the tiny files (in this process and in the runner's)."""
    root = tmp_path_factory.mktemp("docs")
    data = root / "data"
    (root / "yaml").symlink_to(REPO / "yaml")
    checksum_file = root / "checksums.json"
    with pytest.MonkeyPatch.context() as patch:
        accept_test_files(patch, {
            "utils.data.mnist": {name: write_idx_dataset(data, name, n_train=120, n_test=40)
                                 for name in ("MNIST", "FashionMNIST")},
            "utils.data.cifar": {"CIFAR10": write_cifar10(data), "CIFAR100": write_cifar100(data)},
            "utils.data.stl10": write_stl10(data, n_train=20, n_test=4),
        }, checksum_file)
        # the autoencoder's orthogonal init of its 2048-channel weights takes seconds per build
        patch.setattr(models.autoencoder, "orthogonal", lambda shape: __import__("torch").randn(shape))
        patch.chdir(root)
        yield root, checksum_file


def program(words: list[str], checksum_file: Path):
    """The function that runs a command's program in this process, and its arguments."""
    launcher = (sys.executable, str(REPO / "tests/launch.py"), str(checksum_file))
    programs = {
        ("python", "main_class_mlp.py"): lambda argv: experiment.main(MLP, argv),
        ("python", "main_class_cnn.py"): lambda argv: experiment.main(CNN, argv),
        ("python", "main_ae.py"): lambda argv: experiment.main(AUTOENCODER, argv),
        ("python", "prepare_data.py"): prepare_main,
        ("python", "-m", "ccl.reproduce"): lambda argv: reproduce_main(argv, launcher=launcher),
        ("python", "-m", "ccl.bench"): bench_main,
        ("python", "-m", "ccl.figures"): figures_main,
        ("python", "-m", "ccl.analysis"): analysis_main,
    }
    for prefix, function in programs.items():
        if tuple(words[:len(prefix)]) == prefix:
            return function, words[len(prefix):]
    raise AssertionError(f"no runner for {' '.join(words)}")


def run(command: str, extra: str, checksum_file: Path) -> tuple[int, str]:
    function, argv = program(shlex.split(command), checksum_file)
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = function([*argv, *shlex.split(extra)])
        except SystemExit as stop:  # argparse's --help
            code = stop.code
    return code, output.getvalue()


@pytest.mark.slow
def test_documented_commands_run(scratch):
    """Each SHORTENED command, in order, exits 0 (a CUDA-less machine runs the CPU forms)."""
    _, checksum_file = scratch
    failures = []
    for command, extra in SHORTENED.items():
        code, output = run(command, extra, checksum_file)
        if code not in (0, None):
            failures.append(f"{command} {extra}: exit {code}\n{output[-2000:]}")
    assert not failures, "\n\n".join(failures)
