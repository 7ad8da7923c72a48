"""One run over several processes: `torchrun --nproc_per_node N main_class_cnn.py --yaml ...`.

Each process (a *rank*) computes what one process computes for the whole batch, on its part of
it (docs/SCALING.md):

- Batches. Every rank holds the whole dataset and draws every global batch of `batchsize`
  samples exactly as one process does (order, augmentation), then keeps its slice: rows
  [r B/N, (r+1) B/N) (`World.slice_batch`). An epoch's last, smaller batch is trained whole by
  every rank when N does not divide it: it is one batch an epoch, and splitting it unequally
  would need losses weighted per rank and a padded gather.
- Gradients. One all-reduce averages the gradients of both networks between `backward()` and
  `optimizer.step()`, in the training loop. Every layer-pair loss is a mean over its rank's equal
  slice, so the average is the gradient of the global batch's loss; a rule's gradients stay
  whatever its detached inputs make them, per parameter, as in one process.
- Terms that couple the samples of a batch see the whole of it: the CNN pair loss's Gram term
  gathers every rank's unit rows (`World.gather_rows`), and BatchNorm's training statistics are
  reduced over the ranks (ccl/distributed/batchnorm.py).
- Reads. The losses that the loop reads every 50 steps are averaged over the ranks by the same
  collective that carries every rank's stop request (`World.read_mean`), so all ranks stop, or
  diverge, at the same step; validation and test sums are added up over the ranks' shards.
- Rank 0 alone writes the run directory and takes its lock; the others follow its decisions
  (`World.on_main`).
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from utils.errors import ConfigError, UserError

T = TypeVar("T")
BACKENDS = ("gloo", "nccl")
# A collective that waits longer than this for a rank fails (the longest legitimate wait: rank 0
# writing a checkpoint while the others wait at the next step), so a rank that hangs cannot hang
# the run; a rank that dies closes its connections and fails the others' next collective at once.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")  # torchrun sets them with RANK and WORLD_SIZE
# What gloo and NCCL say when a rank of the group is gone
LOST_RANK_MESSAGES = ("Connection closed by peer", "Connection reset by peer", "Timed out",
                      "timed out", "Socket Timeout", "NCCL communicator was aborted")


class Relayed(UserError):
    """Rank 0 refused to go on (its error is printed by rank 0); this rank stops with its exit code."""

    def __init__(self, exit_code: int):
        super().__init__(f"rank 0 stopped the run (exit code {exit_code})")
        self.exit_code = exit_code


@dataclass(eq=False)  # one world per process: compared by identity
class World:
    """This process's place among the processes of a run (one process: rank 0 of 1), and how the
    batch in progress is shared among them."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    whole_batch: bool = True  # this rank holds the whole batch in progress (always, in one process)

    @classmethod
    def from_environment(cls, environ=os.environ) -> World:
        """The world torchrun started this process in (its RANK, WORLD_SIZE, LOCAL_RANK)."""
        size = int(environ.get("WORLD_SIZE", 1))
        if size == 1:
            return cls()
        return cls(rank=int(environ["RANK"]), size=size, local_rank=int(environ.get("LOCAL_RANK", 0)),
                   whole_batch=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        """What a run's results say about its processes (nothing, for one process)."""
        return {} if self.size == 1 else {"processes": self.size}

    # --- before the processes meet ---------------------------------------------------------
    def check(self, config, uses_fused_pair_loss: bool) -> None:
        """The configs a run over several processes cannot train exactly (ConfigError)."""
        if self.size == 1:
            return
        if config.batchsize % self.size:
            divisors = [n for n in range(2, config.batchsize + 1) if config.batchsize % n == 0]
            raise ConfigError(f"batchsize {config.batchsize} cannot be shared equally by {self.size} "
                              f"processes: start a number of processes that divides it "
                              f"({', '.join(map(str, divisors[:8]))}{', ...' if len(divisors) > 8 else ''}), "
                              f"or set another batchsize")
        if uses_fused_pair_loss and config.fused_pair_loss:
            raise ConfigError("fused_pair_loss 1 computes the batch's N x N decorrelation term and its "
                              "gradient in closed form within one process; across processes it would "
                              "miss the other ranks' samples: set fused_pair_loss: 0 to train with torchrun")
        if config.compile:
            raise ConfigError("compile 1 is not supported across processes (the gathered decorrelation "
                              "term and the synchronised BatchNorm are not compiled): set compile: 0 to "
                              "train with torchrun")
        if config.analysis_every:
            raise ConfigError("analysis_every measures one process's probe batch between epochs: set "
                              "analysis_every: 0 to train with torchrun, and measure the best model "
                              "afterwards with python -m ccl.analysis RUN_DIR")

    def device(self, requested: str) -> str:
        """This process's device: under torchrun a CUDA run takes the GPU of its LOCAL_RANK."""
        device = torch.device(requested)
        if self.size == 1 or device.type != "cuda":
            return requested
        if device.index is not None:
            raise ConfigError(f"--device {requested}: under torchrun each process takes the GPU of its "
                              f"LOCAL_RANK; pass --device cuda")
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise ConfigError(f"process {self.rank} has LOCAL_RANK {self.local_rank} but this node has "
                              f"{count} CUDA devices: start at most {count} processes per node "
                              f"(--nproc_per_node {count})")
        return f"cuda:{self.local_rank}"

    @staticmethod
    def backend(device: str, requested: str | None) -> str:
        """gloo on the CPU, NCCL on CUDA, unless `--dist_backend` asks for one (gloo runs anywhere)."""
        on_cuda = torch.device(device).type == "cuda"
        backend = requested or ("nccl" if on_cuda else "gloo")
        if backend == "nccl" and not torch.cuda.is_available():
            raise ConfigError("--dist_backend nccl needs CUDA GPUs and there are none here: use "
                              "--dist_backend gloo (the default on the CPU)")
        if backend == "nccl" and not on_cuda:
            raise ConfigError(f"--dist_backend nccl needs the run on CUDA, not on {device}: pass "
                              f"--device cuda, or --dist_backend gloo")
        available = dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()
        if not available:
            raise ConfigError(f"this PyTorch build has no {backend}: use --dist_backend "
                              f"{'gloo' if backend == 'nccl' else 'nccl'}")
        return backend

    @contextmanager
    def joined(self, device: str, backend: str | None) -> Iterator[World]:
        """The process group of the run, for the block's duration (one process: none)."""
        if self.size == 1:
            yield self
            return
        backend = self.backend(device, backend)
        missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE is {self.size} but {', '.join(missing)} is not set: start "
                              f"the run with torchrun (python -m torch.distributed.run)")
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        try:
            yield self
        finally:
            dist.destroy_process_group()

    @staticmethod
    def lost_rank(error: BaseException) -> bool:
        """Whether `error` says that another rank of the run is gone (died, or hung)."""
        return isinstance(error, getattr(dist, "DistError", ())) or (
            isinstance(error, RuntimeError) and any(text in str(error) for text in LOST_RANK_MESSAGES))

    # --- batches ---------------------------------------------------------------------------
    def slice_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of a global batch: an equal slice, or all of it when the number of
        processes does not divide the batch (an epoch's last one)."""
        if self.size == 1:
            return inputs, targets
        self.whole_batch = len(targets) % self.size != 0
        if self.whole_batch:
            return inputs, targets
        part = len(targets) // self.size
        rows = slice(self.rank * part, (self.rank + 1) * part)
        return inputs[rows], targets[rows]

    def global_size(self, batch_size: int) -> int:
        """The samples of the global batch that a rank holding `batch_size` of them is part of."""
        return batch_size if self.whole_batch else batch_size * self.size

    def evaluation_shard(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of an evaluation batch (nearly equal parts, some maybe empty): the
        metrics are sums over samples, added up over the ranks."""
        if self.size == 1:
            return inputs, targets
        return torch.tensor_split(inputs, self.size)[self.rank], torch.tensor_split(targets, self.size)[self.rank]

    def gather_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every rank's `rows` of the batch in progress, in rank order, and the index of this
        rank's first row among them. The gradient that reaches a rank's rows is the sum of what
        every rank's loss sends them, as if one process held the whole batch."""
        if self.whole_batch:
            return rows, 0
        return _GatheredRows.apply(rows, self), self.rank * len(rows)

    # --- collectives the training loop reads -----------------------------------------------
    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks: one all-reduce of them all."""
        if self.size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]  # the same parameters on every rank
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        flat.div_(self.size)
        for grad, average in zip(grads, flat.split([grad.numel() for grad in grads])):
            grad.copy_(average.view_as(grad))

    def read_mean(self, table: torch.Tensor, stop: int | None) -> tuple[list, int | None]:
        """`table` averaged over the ranks and read to the host (one read), and the signal the run
        stops for: `stop` in one process; across processes any rank's request, carried by the same
        all-reduce, so that every rank reads the same answer at the same step."""
        if self.size == 1:
            return table.tolist(), stop
        flat = torch.cat((table.flatten(), table.new_tensor([0.0 if stop is None else 1.0])))
        dist.all_reduce(flat)
        values = (flat / self.size).tolist()
        requested = values.pop() > 0
        rows = [values[start:start + table.shape[-1]] for start in range(0, len(values), table.shape[-1])]
        return rows, (stop or signal.SIGTERM) if requested else None

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` added up over the ranks."""
        if self.size > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def on_main(self, decide: Callable[[], T]) -> T:
        """`decide()`, run by rank 0 alone (it alone reads and writes the run directory), its
        value or its UserError given to every rank."""
        if self.size == 1:
            return decide()
        outcome: list = [None]
        if self.is_main:
            try:
                outcome = [("value", decide())]
            except UserError as error:
                dist.broadcast_object_list([("error", error.exit_code)], src=0)
                raise
        dist.broadcast_object_list(outcome, src=0)
        kind, value = outcome[0]
        if kind == "error":
            raise Relayed(value)
        return value


ONE_PROCESS = World()


class _GatheredRows(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order. Backward: each rank's loss has a gradient for
    every row; their sum over the ranks, at this rank's rows, is what these rows receive."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, world: World) -> torch.Tensor:
        ctx.world, ctx.rows = world, len(rows)
        parts = [torch.empty_like(rows) for _ in range(world.size)]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = ctx.world.rank * ctx.rows
        return total[start:start + ctx.rows], None
