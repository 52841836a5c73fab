"""cocoseg: reproducible multi-class semantic segmentation on a COCO subset."""

__version__ = "0.1.0"
