"""Datasets as whole uint8 tensors, split, batched and transformed on the device."""
from utils.data.datasets import SOURCE_OF, SOURCES, Splits, load_splits, split_indices
from utils.data.loader import BatchLoader, classification_batch

__all__ = ["SOURCES", "SOURCE_OF", "BatchLoader", "Splits", "classification_batch", "load_splits",
           "split_indices"]
