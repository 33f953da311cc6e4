"""The segmentation stage."""
