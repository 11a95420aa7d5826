"""Explanations as pictures, on the device's own models and preprocessing (no PyTorch).

- occlusion: the drop of a match score as a blurred (or grey) patch slides over an aligned face (one decision);
- units: the image patches that activate chosen units of shallow, middle and deep layers most (the model);
- receptive: receptive fields of an ONNX graph's feature maps, from its Conv and pooling nodes;
- match: one decision explained (1:1 pair, or a probe against a stored identity), as PNG bytes or a grid;
- draw: the pictures, with OpenCV only; bench: do the maps point at the face (LFW View 1)?
"""
