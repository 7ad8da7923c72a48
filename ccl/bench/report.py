"""The benchmark's tables, as plain text."""
from __future__ import annotations

from collections.abc import Sequence

from ccl.bench.epoch import EpochResult, PipelineResult
from ccl.bench.flops import FlopsResult
from ccl.bench.steps import PHASES, StepResult
from ccl.reproduce.paper import TABLE2_MFLOPS


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [list(map(str, header))] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def ratio(results: Sequence[StepResult], arch: str) -> float:
    """CCL step time over BP step time on `arch`."""
    step = {r.method: r.step_ms for r in results if r.arch == arch}
    return step["CCL"] / step["BP"]


def steps_table(results: Sequence[StepResult]) -> str:
    rows = []
    for arch in dict.fromkeys(r.arch for r in results):
        bp, ccl = (next(r for r in results if r.arch == arch and r.method == m) for m in ("BP", "CCL"))
        rows.append([arch, bp.batch_size, bp.step_ms, ccl.step_ms, ratio(results, arch),
                     bp.samples_per_s, ccl.samples_per_s, bp.peak_mb, ccl.peak_mb])
    return table(["arch", "batch", "BP ms", "CCL ms", "CCL/BP", "BP samples/s", "CCL samples/s",
                  "BP peak MB", "CCL peak MB"], rows)


def split_table(results: Sequence[StepResult]) -> str:
    rows = []
    for r in results:
        total = sum(r.split_ms.values())
        rows.append([r.arch, r.method, *(r.split_ms[p] for p in PHASES), total,
                     *(f"{100 * r.split_ms[p] / total:.0f}%" for p in PHASES)])
    return table(["arch", "method", *(f"{p} ms" for p in PHASES), "total ms",
                  *(f"{p} %" for p in PHASES)], rows)


def pipeline_table(result: PipelineResult) -> str:
    rows = [[name, result.train_samples, result.batch_size, seconds[0], seconds[-1],
             result.train_samples / seconds[-1]]
            for name, seconds in (("ours (BatchLoader)", result.ours_seconds),
                                  ("torchvision DataLoader", result.torchvision_seconds))]
    return (table(["pipeline", "samples", "batch", "epoch 1 s", "last epoch s", "samples/s"], rows)
            + f"\nspeed-up of ours (last epoch): {result.speedup:.2f}x")


def epoch_table(result: EpochResult) -> str:
    rows = [[index + 1, result.train_samples, result.batch_size, seconds,
             result.train_samples / seconds, evaluation]
            for index, (seconds, evaluation) in enumerate(zip(result.epoch_seconds, result.eval_seconds))]
    return f"{result.config}\n" + table(["epoch", "samples", "batch", "train s", "samples/s",
                                         "validation s"], rows)


def operators_table(result: StepResult, shapes_width: int = 60) -> str:
    rows = [[op["name"], op["shapes"][:shapes_width], op["calls_per_step"], op["ms_per_step"]]
            for op in result.operators]
    count = "" if result.operator_count is None else f": {result.operator_count} operators per step"
    return f"{result.arch} {result.method}{count}\n" + table(["operator", "input shapes", "calls/step",
                                                                "ms/step"], rows)


def numerics_table(rows: Sequence[dict]) -> str:
    columns = ("first_step", "parameters", "loss")
    return table(["arch", "steps", "float32 again: step 1", "all steps", "loss",
                  "speed-ups: step 1", "all steps", "loss"],
                 [[r["arch"], r["steps"], *(r["float32_again"][c] for c in columns),
                   *(r["speed_ups"][c] for c in columns)] for r in rows])


def flops_table(results: Sequence[FlopsResult]) -> str:
    """MFLOPs per sample of each rule's step, with its ratio to BP's, beside the paper's."""
    bp = {r.arch: r.step_flops for r in results if r.method == "BP"}
    paper_bp = {arch: mflops for (arch, method), mflops in TABLE2_MFLOPS.items() if method == "BP"}
    rows = []
    for r in results:
        paper = TABLE2_MFLOPS.get((r.arch, r.method))
        rows.append([r.arch, r.method, r.batch, f"{r.per_sample(r.feedback_phase_flops):.3f}",
                     f"{r.per_sample(r.loss_flops):.3f}",
                     f"{r.per_sample(r.backward_flops):.3f}", f"{r.per_sample(r.step_flops):.3f}",
                     f"{r.step_flops / bp[r.arch]:.3f}" if r.arch in bp else None,
                     f"{paper:.2f}" if paper else None,
                     f"{paper / paper_bp[r.arch]:.3f}" if paper else None])
    return table(["arch", "method", "batch", "feedback phase", "forward+losses", "backward", "step", "/BP",
                  "paper", "paper /BP"], rows)


def tp_steps_table(results) -> str:
    """Each TP rule's step beside BP's (per sample: the batches may differ), and a row's cost."""
    bp = {r.arch: r.step_ms / r.batch_size for r in results if r.method == "BP"}
    rows = [[r.arch, r.method, r.batch_size, f"{r.step_ms:.2f}", f"{r.feedback_call_ms:.2f}",
             f"{r.step_ms / r.batch_size / bp[r.arch]:.2f}", f"{r.row_hours:.2f}"] for r in results]
    return table(["arch", "method", "batch", "step ms", "feedback call ms", "/BP per sample",
                  "5 seeds x epochs, h"], rows)
