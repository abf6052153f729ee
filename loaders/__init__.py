"""The data side: dataset discovery and one loader backend per file behind one batch contract.

The names below load on first use (PEP 562): the backends import torch and torchvision, seconds
that `sslight pack` and the dataset helpers, which import modules of this package, never need."""

__all__ = ["Batch", "Loader", "ViewGroup", "view_groups", "BACKENDS", "build_loader"]


def __getattr__(name: str):
    if name in ("Batch", "Loader", "ViewGroup", "view_groups"):
        from loaders import batch as home
    elif name in ("BACKENDS", "build_loader"):
        from loaders import registry as home
    else:
        raise AttributeError(f"module 'loaders' has no attribute {name!r}")
    return getattr(home, name)
