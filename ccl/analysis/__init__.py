"""`python -m ccl.analysis RUN_DIR`: the paper's analyses of a finished run's best model (cli.py).

A tool, at the level of the entry scripts: it rebuilds a run (ccl/scripts.py) and measures it
with ccl/measures.py, which the trainer also uses during training (`analysis_every`,
`analysis_steps`).
"""
