"""A dual network: a stack of dual layers read upwards by the forward network and downwards by
the feedback network."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.layers import DualLayer


class DualNetwork(nn.Module):
    """Layers are registered as `layer1..layerL`, from input to output.

    `forward(x)` returns the activations [a_0 = x, a_1, ..., a_L] and `feedback(target)` the
    signals [b_0, ..., b_L = target]. With `detach=True` every layer's input is cut from the
    graph, so a loss on a_l (or b_{l-1}) only reaches the parameters of the map that made it:
    the layer-local credit assignment of CCL.
    """

    def __init__(self, layers: Sequence[DualLayer]):
        super().__init__()
        for index, layer in enumerate(layers, start=1):
            self.add_module(f"layer{index}", layer)

    @property
    def layers(self) -> list[DualLayer]:
        return list(self.children())

    def forward(self, x: torch.Tensor, detach: bool = False) -> list[torch.Tensor]:
        activations = [x]
        for layer in self.layers:
            a = activations[-1]
            activations.append(layer(a.detach() if detach else a))
        return activations

    def feedback(self, target: torch.Tensor, detach: bool = False) -> list[torch.Tensor]:
        signals = [target]
        for layer in reversed(self.layers):
            b = signals[0]
            signals.insert(0, layer.feedback(b.detach() if detach else b))
        return signals

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The forward network's output a_L, without keeping the intermediate activations."""
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.fwd.parameters()]

    def feedback_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.bwd.parameters()]
