"""The autoencoder tasks: which pixels each one moves or zeroes, on whole batches, and that a
seed fixes the random ones."""
import pytest
import torch
from conftest import REPO

from ccl.cli import parse_command_line
from ccl.config import TASK_TRANSFORMS as TASK_NAMES
from utils.data import Splits
from utils.data.recipes import ae_data
from utils.data.task_transforms import TASK_TRANSFORMS


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def hot_pixel(row, col, size=16):
    """A batch of 2 single-channel images, 1 at (row, col), 0 elsewhere."""
    x = torch.zeros(2, 1, size, size)
    x[:, :, row, col] = 1.0
    return x


def test_every_configurable_task_exists():
    assert set(TASK_TRANSFORMS) == set(TASK_NAMES) - {"none"}


def test_same_feeds_the_input_back_as_target():
    x = torch.rand(3, 3, 8, 8)
    inputs, targets = TASK_TRANSFORMS["same"](x, generator())
    assert inputs is x and targets is x


def test_drop_color_zeroes_one_whole_channel_in_three_images_of_five():
    x = torch.rand(3000, 3, 4, 4) + 0.1  # no pixel is 0 before
    inputs, targets = TASK_TRANSFORMS["DropColor"](x, generator())
    assert targets is x
    zeroed = (inputs == 0).flatten(2)
    whole_channel = zeroed.all(dim=2)
    assert torch.equal(zeroed.any(dim=2), whole_channel), "a channel is zeroed entirely or not at all"
    assert whole_channel.sum(dim=1).max() <= 1, "at most one channel per image"
    assert torch.equal(inputs[~whole_channel], x[~whole_channel]), "other channels untouched"
    assert whole_channel.any(dim=1).float().mean().item() == pytest.approx(3 / 5, abs=0.04)
    per_channel = whole_channel.float().mean(dim=0)
    assert torch.allclose(per_channel, torch.full((3,), 1 / 5), atol=0.03), per_channel


def test_rand_crop_zeroes_a_32_pixel_square_in_half_of_the_images():
    x = torch.ones(400, 3, 96, 96)
    inputs, targets = TASK_TRANSFORMS["RandCrop"](x, generator())
    assert targets is x
    zero = inputs == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero)), "all channels of the square"
    zero = zero[:, 0]
    erased = zero.flatten(1).any(dim=1)
    assert erased.float().mean().item() == pytest.approx(0.5, abs=0.08)
    tops, lefts = [], []
    for mask in zero[erased]:
        rows, cols = mask.any(dim=1).nonzero().squeeze(1), mask.any(dim=0).nonzero().squeeze(1)
        assert len(rows) == 32 and len(cols) == 32 and rows[-1] - rows[0] == 31 and cols[-1] - cols[0] == 31
        assert mask.sum() == 32 * 32, "a full square"
        tops.append(rows[0].item())
        lefts.append(cols[0].item())
    assert 0 <= min(tops) and max(tops) <= 63 and 0 <= min(lefts) and max(lefts) <= 63
    assert max(tops) > 50 and min(tops) < 13, "corners spread over [0, 64)"


def test_rot90_turns_the_target_a_quarter_counter_clockwise():
    x = hot_pixel(0, 15)  # top-right corner ...
    inputs, targets = TASK_TRANSFORMS["rot90"](x, generator())
    assert inputs is x
    assert targets[:, 0, 0, 0].eq(1).all() and targets.sum() == 2  # ... goes to the top-left


def test_rot180_turns_the_target_upside_down():
    x = hot_pixel(0, 15)
    _, targets = TASK_TRANSFORMS["rot180"](x, generator())
    assert targets[:, 0, 15, 0].eq(1).all() and targets.sum() == 2


@pytest.mark.parametrize("name, moved_to", [
    ("shiftv5", (6, 2)), ("shiftv10", (11, 2)), ("shifth5", (1, 7)), ("shifth10", (1, 12)),
])
def test_shifts_roll_the_target_down_or_right(name, moved_to):
    x = hot_pixel(1, 2)
    inputs, targets = TASK_TRANSFORMS[name](x, generator())
    assert inputs is x
    assert targets[:, 0, moved_to[0], moved_to[1]].eq(1).all() and targets.sum() == 2


def test_shifts_wrap_around():
    _, targets = TASK_TRANSFORMS["shiftv10"](hot_pixel(14, 14), generator())
    assert targets[:, 0, 8, 14].eq(1).all()
    _, targets = TASK_TRANSFORMS["shifth5"](hot_pixel(14, 14), generator())
    assert targets[:, 0, 14, 3].eq(1).all()


def test_bright_inverts_the_target():
    x = torch.rand(2, 3, 8, 8)
    inputs, targets = TASK_TRANSFORMS["bright"](x, generator())
    assert inputs is x and torch.equal(targets, 1 - x)


@pytest.mark.parametrize("name", ["DropColor", "RandCrop"])
def test_random_tasks_draw_from_the_generator_only(name):
    x = torch.rand(64, 3, 96, 96)
    global_state = torch.get_rng_state()
    first = TASK_TRANSFORMS[name](x, generator(1))[0]
    again = TASK_TRANSFORMS[name](x, generator(1))[0]
    other = TASK_TRANSFORMS[name](x, generator(2))[0]
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_autoencoder_batches_crop_training_images_only():
    config, _ = parse_command_line(["--yaml", str(REPO / "yaml/cnn_ae/stl10_ccl_legacy.yaml"),
                                    "--task_transform", "bright", "--batchsize", "16"],
                                   "main_ae.py", "", {"task": "autoencoder"})
    images = torch.randint(1, 256, (16, 3, 96, 96), dtype=torch.uint8)  # no 0 before padding
    labels = torch.zeros(16, dtype=torch.int64)
    data = ae_data(config, Splits((images, labels), (images, labels), (images, labels), 10))
    inputs, targets = next(data.train.epoch(0))
    assert inputs.dtype == torch.float32 and inputs.shape == (16, 3, 96, 96)
    assert torch.equal(targets, 1 - inputs), "the task acts on the augmented images"
    assert (inputs == 0).any(), "zero padding of the random crop shows"
    inputs, targets = next(data.test.epoch())
    assert torch.equal(inputs, images.float() / 255) and torch.equal(targets, 1 - inputs)
