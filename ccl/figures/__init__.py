"""`python -m ccl.figures`: figures of runs, one subcommand each (cli.py):

    python -m ccl.figures cka RUN_DIR ... [--epochs E ...|--steps S ...]
                                                              CKA heatmaps at chosen points, the
                                                              mean over runs (seeds), and their changes
    python -m ccl.figures alignment RUN_DIR ...               weight cosine and gradient angle over epochs
    python -m ccl.figures kernels RUN_BP RUN_CCL [--count K]  first-layer conv kernels side by side
    python -m ccl.figures curves RUN_DIR ...                  loss and accuracy (AE: MSE) per epoch,
                                                              and each loss term (CCL's pair losses)
    python -m ccl.figures tsne RUN_DIR [--steps S ...] [--layers L ...] [--samples N]
                                                              t-SNE of forward and feedback embeddings
    python -m ccl.figures grid GRID_CSV [--title T] [--paper CONFIG]
                                                              test accuracy over lr_F x lr_B (beside the
                                                              paper's Figure 7 and the difference)
    python -m ccl.figures reconstructions RUN_DIR             an autoencoder run's reconstructions.png again
    python -m ccl.figures compare RUN_DIR ... --out FILE      reconstructions of several autoencoder runs

Each takes `--out FILE`; by default the figure goes into the first run directory given
(`cka.png`, `alignment.png`, `kernels.png`, `curves.png`, `reconstructions.png`), or beside the
CSV (`GRID.png`). `reconstructions` and `compare` rebuild each run's best model and test set
from its config.yaml (`--data_root`, `--device`); `main_ae.py` draws `reconstructions.png`
itself at the end of a run (`save_reconstructions`).

A tool, at the level of the entry scripts: it reads run directories through ccl/run_dir.py,
rebuilds runs through ccl/scripts.py and draws with ccl/plots.py.
"""
