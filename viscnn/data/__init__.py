"""Image data: Fashion-MNIST (:mod:`viscnn.data.fashion_mnist`) and image-set sources
(:func:`image_batches`, :func:`open_images`) for scoring and circuits."""

from viscnn.data.sources import ImageSource, image_batches, open_images

__all__ = ["ImageSource", "image_batches", "open_images"]
