"""Image-side preprocessing shared by the device and the export stage: detect, align."""
