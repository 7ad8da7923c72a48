"""Objectives: what the learning rules need to know about the problem a network solves (the
config's `task`): what the feedback network receives, the layer-pair losses, the output loss
and the evaluation metrics."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ccl.losses import ae_pair_loss, flooding_keep_mask

# (a_l, b_l, one-hot targets, keep mask or None) -> loss of the pair
AlignmentLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def flood_threshold(config) -> float | None:
    """The config's flooding threshold, or None when flooding is off (`filter_target: 0`)."""
    return config.flood_threshold if config.filter_target else None


class Classification:
    """Labels in, logits out. The feedback network receives the one-hot vectors of all classes
    (a C x C identity), so b_l holds one template per class and costs C samples per step."""

    metric_names = ("loss", "acc")
    # model selection: name -> (validation metric, whether lower is better). The first is the
    # released rule, whose model gives a run's test_* results; each is tested at the end.
    selections = {"val_loss": ("loss", True), "val_acc": ("acc", False)}
    feedback_reads_batch = False  # the feedback input is the same on every rank of a run

    def __init__(self, num_classes: int, alignment: AlignmentLoss, flood_threshold: float | None):
        self.num_classes = num_classes
        self.alignment = alignment
        self.flood_threshold = flood_threshold

    def feedback_input(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.eye(self.num_classes, device=labels.device)

    def local_losses(self, activations: Sequence[torch.Tensor], signals: Sequence[torch.Tensor],
                     labels: torch.Tensor) -> torch.Tensor:
        """Sum of the alignment losses of pairs 0..L-1 and cross-entropy on the logits a_L."""
        logits = activations[-1]
        keep = None
        if self.flood_threshold is not None:
            keep = flooding_keep_mask(logits, labels, self.flood_threshold)
        onehot = torch.zeros_like(logits).scatter_(1, labels[:, None], 1.0)
        loss = F.cross_entropy(logits, labels)
        for a, b in zip(activations[:-1], signals[:-1]):
            loss = loss + self.alignment(a, b, onehot, keep)
        return loss

    def output_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def metric_sums(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-batch sums of (cross-entropy, correct predictions); divided by N they give the metrics."""
        ce = F.cross_entropy(logits.float(), labels, reduction="sum")
        correct = (logits.argmax(dim=1) == labels).sum().to(ce.dtype)
        return torch.stack([ce, correct])


class Reconstruction:
    """Images in, images out (the autoencoder). The feedback network receives the target image.
    Pairs: the two end pairs (x vs b_0, reconstruction vs target) use the raw term only, the
    hidden pairs add the centred/normalised term."""

    metric_names = ("mse",)
    selections = {"val_loss": ("mse", True)}  # the validation loss is the MSE
    feedback_reads_batch = True  # the feedback input is the batch's targets

    def __init__(self, loss_scale_C: float, loss_scale_D: float):
        self.loss_scale_C = loss_scale_C
        self.loss_scale_D = loss_scale_D

    def feedback_input(self, targets: torch.Tensor) -> torch.Tensor:
        return targets

    def local_losses(self, activations: Sequence[torch.Tensor], signals: Sequence[torch.Tensor],
                     targets: torch.Tensor) -> torch.Tensor:
        last = len(activations) - 1
        return sum(
            ae_pair_loss(a, b, self.loss_scale_C, None if index in (0, last) else self.loss_scale_D)
            for index, (a, b) in enumerate(zip(activations, signals))
        )

    def output_loss(self, reconstruction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(reconstruction, targets)

    @torch.no_grad()
    def metric_sums(self, reconstruction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_sample = (reconstruction.float() - targets.float()).pow(2).flatten(1).mean(dim=1)
        return per_sample.sum()[None]
