"""tests/launch.py for one rank of a torchrun run, with two hooks (environment variables):
RANK_PIDS=DIR: each rank writes its process id to DIR/rank<R>, for a test to kill it;
SIGNAL_AT=R:S: rank R alone sends itself SIGTERM while training step S (from 1) computes its loss."""
import itertools
import os
import signal
import sys
from pathlib import Path

import launch  # beside this file

sys.path.insert(0, str(launch.REPO))
RANK = int(os.environ["RANK"])


def signal_at(step: int) -> None:
    from runs import with_loss

    from ccl.rules import RULES

    steps = itertools.count(1)

    def rule(original, *args):
        if next(steps) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    RULES["CCL"] = with_loss("CCL", rule)


if __name__ == "__main__":
    if "RANK_PIDS" in os.environ:
        (Path(os.environ["RANK_PIDS"]) / f"rank{RANK}").write_text(str(os.getpid()))
    if "SIGNAL_AT" in os.environ:
        rank, step = map(int, os.environ["SIGNAL_AT"].split(":"))
        if rank == RANK:
            signal_at(step)
    launch.main()
