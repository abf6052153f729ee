"""The data side: dataset discovery and one loader backend per file behind one batch contract."""

from loaders.batch import Batch, Loader, ViewGroup, view_groups
from loaders.registry import BACKENDS, build_loader

__all__ = ["Batch", "Loader", "ViewGroup", "view_groups", "BACKENDS", "build_loader"]
