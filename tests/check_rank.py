"""A rank of `python -m ccl.bench.scaling`'s torchrun run, with the autoencoder at the
tests' widths (the released 128-2048 channels at 96x96 take seconds per image on a CPU)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TINY_AE_WIDTHS = (4, 8, 8, 8)  # the encoder's; the decoder mirrors them

if __name__ == "__main__":
    import models.autoencoder

    models.autoencoder.ENCODER_WIDTHS = TINY_AE_WIDTHS
    from ccl.bench.scaling import main

    sys.exit(main())
