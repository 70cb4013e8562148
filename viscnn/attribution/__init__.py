"""Pixel-space explanations that are right on any architecture: saliency, integrated gradients,
SmoothGrad, occlusion, DeconvNet, guided backprop, CAM, Grad-CAM (guided, cropped) and its variants
Grad-CAM++, XGrad-CAM and Layer-CAM, weight pictures, comparisons across models, and attribution restricted to a
circuit.

Every method takes the user's model (never modified) and has one verb,
``attribute(inputs, target) -> Tensor``; ReLU rules are applied to the torch.fx graph of a
working copy, so functional and in-place ReLUs get them too.
"""

from viscnn.attribution.base import Attribution
from viscnn.attribution.cam import CAM, find_cam_head
from viscnn.attribution.circuit_mask import attribute_in_circuit, circuit_model
from viscnn.attribution.compare import Comparison, compare_models, compare_sizes
from viscnn.attribution.crop import Crop, gradcam_crop, normalize_maps
from viscnn.attribution.deconvnet import Deconvolution, deconvnet_of_unit
from viscnn.attribution.gradcam import GradCAM
from viscnn.attribution.gradcam_variants import GradCAMPlusPlus, LayerCAM, XGradCAM
from viscnn.attribution.guided_backprop import GuidedBackprop
from viscnn.attribution.guided_gradcam import GuidedGradCAM
from viscnn.attribution.integrated_gradients import IntegratedGradients
from viscnn.attribution.occlusion import Occlusion
from viscnn.attribution.methods import METHODS, make_method
from viscnn.attribution.saliency import Gradient, InputXGradient, Saliency
from viscnn.attribution.smoothgrad import SmoothGrad
from viscnn.attribution.traced import TracedModel
from viscnn.attribution.weights import kernel_tiles, rgb_filter_grid, rgb_filters, side_by_side

__all__ = [
    "Attribution", "CAM", "Comparison", "Crop", "Deconvolution", "GradCAM", "GradCAMPlusPlus", "Gradient",
    "GuidedBackprop", "GuidedGradCAM", "InputXGradient", "IntegratedGradients", "LayerCAM", "METHODS", "Occlusion",
    "Saliency", "SmoothGrad", "TracedModel", "XGradCAM", "attribute_in_circuit",
    "circuit_model", "compare_models", "compare_sizes", "deconvnet_of_unit", "find_cam_head", "gradcam_crop",
    "kernel_tiles", "make_method", "normalize_maps", "rgb_filter_grid", "rgb_filters", "side_by_side",
]
