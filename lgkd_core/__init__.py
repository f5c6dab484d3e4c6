"""lgkd_core: continual semantic segmentation with Label-Guided Knowledge Distillation."""

__version__ = "0.1.0"
