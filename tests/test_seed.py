"""The run's random streams: one table, distinct ids, each stream's seed apart from the others'."""
from utils.seed import Stream, derived_seed, stream_seed

EPOCHS = range(200)


def test_every_stream_of_every_epoch_has_a_seed_of_its_own():
    per_epoch = [stream_seed(2023, stream, epoch) for epoch in EPOCHS for stream in (Stream.ORDER, Stream.AUGMENT)]
    once = [stream_seed(2023, stream) for stream in Stream if stream not in (Stream.ORDER, Stream.AUGMENT)]
    seeds = per_epoch + once
    collisions = len(seeds) - len(set(seeds))
    assert collisions == 1  # DFA's projections and epoch 2's order, kept for the measured runs
    assert stream_seed(2023, Stream.DIRECT_FEEDBACK) == stream_seed(2023, Stream.ORDER, 2)


def test_the_seeds_of_the_measured_runs_never_move():
    """Every measured run shuffled, and drew DFA's and DRTP's matrices, from these seeds:
    renumbering a stream would change those runs' numbers."""
    assert stream_seed(2023, Stream.ORDER, 5) == derived_seed(2023, 5, 0)
    assert stream_seed(2023, Stream.AUGMENT, 5) == derived_seed(2023, 5, 1)
    assert stream_seed(2023, Stream.DIRECT_FEEDBACK) == derived_seed(2023, 2)
