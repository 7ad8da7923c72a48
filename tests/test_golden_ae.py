"""The autoencoder's CCL and BP steps reproduce the released code's numbers
(tests/fixtures/ae_stl10_ccl.pt, ae_stl10_bp.pt): three steps of the legacy STL-10 autoencoder,
BN after every map but the two output maps, warm-up, momentum, weight decay, gradient
centralisation and clipping. The fixtures start from a seeded recipe rather than the released
init, under which most of these gradients would be zero or tiny; test_autoencoder.py tests that
init."""
import pytest
from golden import assert_steps_match, bn_removed_biases, golden_model_and_objective, load_fixture

import models.autoencoder
from ccl.scripts import ae_objective as make_task

OUTPUT_MAP_BIASES = {"layer8.fwd.bias", "layer1.bwd.bias"}  # the two maps without BN


@pytest.fixture
def without_released_init(monkeypatch):
    """The recipe overwrites every map's weight and bias: skip the released orthogonal init,
    which takes seconds on a CPU."""
    monkeypatch.setattr(models.autoencoder, "initialise", lambda encoder, decoder: None)


@pytest.mark.slow  # three steps of the 86 M-parameter network: 5 s of CPU each
@pytest.mark.usefixtures("without_released_init")
@pytest.mark.parametrize("fixture, batch_from", [("ae_stl10_ccl.pt", None),
                                                ("ae_stl10_bp.pt", "ae_stl10_ccl.pt")])
def test_three_steps_match_released_code(fixture, batch_from):
    golden = load_fixture(fixture, batch_from)
    config, model, task = golden_model_and_objective(golden, make_task)
    every_bias = {f"layer{index}.{side}.bias" for index in range(1, 9) for side in ("fwd", "bwd")}
    assert set(bn_removed_biases(model)) == every_bias - OUTPUT_MAP_BIASES
    assert_steps_match(golden, config, model, task, late_gradients_by_norm=True)
