"""Objectives: what the learning rules need to know about the problem a network solves (the
config's `task`): what the feedback network receives, the layer-pair losses, the output loss
and the evaluation metrics."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ccl.losses import ae_pair_loss, flooding_keep_mask

# (a_l, b_l, one-hot targets, keep mask or None) -> loss of the pair
PairLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def in_order_sum(terms: torch.Tensor) -> torch.Tensor:
    """terms[0] + terms[1] + ... added one after the other, as the objectives always added their
    losses (so the sum is bit-identical to theirs); a 0-d loss is itself."""
    if terms.dim() == 0:
        return terms
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


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

    def __init__(self, num_classes: int, pair_loss: PairLoss, flood_threshold: float | None):
        self.num_classes = num_classes
        self.pair_loss = pair_loss
        self.flood_threshold = flood_threshold

    def feedback_input(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.eye(self.num_classes, device=labels.device)

    def loss_terms(self, activations: Sequence[torch.Tensor], signals: Sequence[torch.Tensor],
                   labels: torch.Tensor) -> torch.Tensor:
        """[cross-entropy on the logits a_L, the pair loss of pair 0, ..., of pair L-1]."""
        logits = activations[-1]
        keep = None
        if self.flood_threshold is not None:
            keep = flooding_keep_mask(logits, labels, self.flood_threshold)
        onehot = torch.zeros_like(logits).scatter_(1, labels[:, None], 1.0)
        pairs = [self.pair_loss(a, b, onehot, keep) for a, b in zip(activations[:-1], signals[:-1])]
        return torch.stack([F.cross_entropy(logits, labels), *pairs])

    @staticmethod
    def term_names(num_layers: int) -> list[str]:
        return ["output", *(f"pair{index}" for index in range(num_layers))]


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

    def loss_terms(self, activations: Sequence[torch.Tensor], signals: Sequence[torch.Tensor],
                   targets: torch.Tensor) -> torch.Tensor:
        """[loss of pair 0, ..., of pair L] (pair L: the reconstruction against the target)."""
        last = len(activations) - 1
        return torch.stack([
            ae_pair_loss(a, b, self.loss_scale_C, None if index in (0, last) else self.loss_scale_D)
            for index, (a, b) in enumerate(zip(activations, signals))
        ])

    @staticmethod
    def term_names(num_layers: int) -> list[str]:
        return [f"pair{index}" for index in range(num_layers + 1)]


    def output_loss(self, reconstruction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(reconstruction, targets)

    @torch.no_grad()
    def metric_sums(self, reconstruction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_sample = (reconstruction.float() - targets.float()).pow(2).flatten(1).mean(dim=1)
        return per_sample.sum()[None]
