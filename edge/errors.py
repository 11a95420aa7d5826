"""Errors a user can act on: the CLI prints their message as one line and exits 2."""


class FacegateError(Exception):
    """A failure caused by input, configuration or a model file, not by a bug."""


class ModelError(FacegateError):
    """A model file or manifest is missing, altered or invalid."""


class ImageError(FacegateError):
    """An image cannot be read, is too large, or is not an image."""


class NoFaceError(FacegateError):
    """No face (or no acceptable face) was found in an image."""


class ManyFacesError(FacegateError):
    """Several faces were found and the selection policy forbids choosing one."""
