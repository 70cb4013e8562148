"""Small built-in models: the default model viscnn ships prepped (``viscnn.zoo.fmnist``)."""

from viscnn.zoo.fmnist import fmnist_cnn

__all__ = ["fmnist_cnn"]
