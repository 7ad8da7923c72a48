"""Train the paper's STL-10 convolutional autoencoder with backprop or counter-current learning.

    python main_ae.py --yaml yaml/cnn_ae/stl10_ccl_legacy.yaml [--KEY VALUE ...]

Besides the usual run directory, writes `reconstructions.png`: 10 fixed test images and the best
model's reconstructions of them. What it trains and how: `AUTOENCODER` in ccl/scripts.py.
"""
import sys

try:
    from ccl.experiment import main
    from ccl.scripts import AUTOENCODER
except KeyboardInterrupt:  # Ctrl-C while the libraries load
    print("\nmain_ae.py: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(AUTOENCODER))
