"""Foundation-model feature extractors (registry in :mod:`client.extractors.base`).

Built in: ``mammoclip`` (EfficientNet-B5, 2048-d), ``medclip`` (ResNet-50 + 512 projection),
``gloria`` (ResNet-50, 2048-d), ``clip`` (open_clip ViT-B-32-quickgelu, 512-d) and
``dinov2`` (ViT-S/14, 384-d); any Hugging Face image model (``arch="hf"``) or open_clip
model (``arch="open_clip:<name>"``) by name and local path. Architectures build offline;
weights are files the user supplies, read in each FM's own checkpoint layout. ``tiny=True``
selects test-size variants (tests and demos only). Use
:func:`client.extractors.base.load_extractor`; :mod:`client.extract` runs the extraction.
"""
