"""Sparsity methods. Importing a method package registers its config, converter and layers."""

from . import cuttlefish, dst, greenformer, pixelfly  # noqa: F401
