"""bisenet-pl: BiSeNet V1 and V2 real-time semantic segmentation with PyTorch Lightning."""

__version__ = "0.1.0"
