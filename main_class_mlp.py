"""Train the paper's MLPs (Table 1) with backprop or counter-current learning.

    python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml [--KEY VALUE ...]

What it trains and how: `MLP` in ccl/scripts.py.
"""
import sys

try:
    from ccl.experiment import main
    from ccl.scripts import MLP
except KeyboardInterrupt:  # Ctrl-C while the libraries load
    print("\nmain_class_mlp.py: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(MLP))
