"""Evaluation of a pre-trained backbone: kNN, the linear probe, semi-supervised fine-tuning
(``sslight eval``, run.py), and the export to a timm file (``sslight export``)."""
