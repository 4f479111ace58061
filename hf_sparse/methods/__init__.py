"""Sparsity methods. Importing a method package registers its config, converter and layers."""

from . import greenformer, pixelfly  # noqa: F401
