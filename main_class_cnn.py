"""Train the paper's CNNs (Table 3 and the other released CNN configs) with backprop or
counter-current learning.

    python main_class_cnn.py --yaml yaml/cnn/cifar10_ccl.yaml [--KEY VALUE ...]

What it trains and how: `CNN` in ccl/scripts.py.
"""
import sys

try:
    from ccl.experiment import main
    from ccl.scripts import CNN
except KeyboardInterrupt:  # Ctrl-C while the libraries load
    print("\nmain_class_cnn.py: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(CNN))
