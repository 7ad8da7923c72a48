"""`python -m ccl.bench`: training speed of BP and CCL on this device (docs/PERFORMANCE.md).

cases.py   what is trained: the released configs on synthetic data held on the device
clock.py   time (CUDA events or perf_counter) and peak memory, from outside the training code
steps.py   step time per architecture and method, and its split into phases
epoch.py   whole epochs through the trainer; our MNIST pipeline against torchvision's
report.py  the tables
cli.py     the command line
scaling.py `python -m ccl.bench.scaling`: one process against N under torchrun, numbers and speed
"""
