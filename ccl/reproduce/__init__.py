"""Reproduce the paper's tables over seeds and put our numbers beside the paper's.

    python -m ccl.reproduce run --table table1 --data_root data --jobs 2
    python -m ccl.reproduce run yaml/mlp/mnist_ccl.yaml --seeds 2023 2024 --epochs 1
    python -m ccl.reproduce table

`run` trains every (config, seed) without a finished results.json (runner.py); `table` reads the
run directories and writes the tables (table.py) against the paper's numbers (paper.py).
"""
