"""sslight: fast self-supervised pre-training of low-compute vision backbones."""

__version__ = "0.1.0"
