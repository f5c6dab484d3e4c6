"""Datasets: on-disk sources, label remapping, per-step image selection, transforms.

Submodules are imported explicitly (``from lgkd_core.data.sources import open_source``) so that
importing one of them does not pull in torch/torchvision for the others.
"""
