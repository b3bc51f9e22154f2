"""Weights released with bisenet-pl (installed as the package data ``bisenet_pl.weights``); load them
with ``--model.pretrained=NAME`` or ``SegmentationModule.from_pretrained(NAME)``. See README.md here."""
