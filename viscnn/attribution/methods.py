"""Method names (the CLI's ``--method``, the app's picker) -> classes, and one constructor."""

from __future__ import annotations

from typing import Dict, Optional, Type

from viscnn.attribution.base import Attribution, ModelLike
from viscnn.attribution.cam import CAM
from viscnn.attribution.deconvnet import Deconvolution
from viscnn.attribution.gradcam import GradCAM
from viscnn.attribution.gradcam_variants import GradCAMPlusPlus, LayerCAM, XGradCAM
from viscnn.attribution.guided_backprop import GuidedBackprop
from viscnn.attribution.guided_gradcam import GuidedGradCAM
from viscnn.attribution.integrated_gradients import IntegratedGradients
from viscnn.attribution.occlusion import Occlusion
from viscnn.attribution.saliency import Gradient, InputXGradient, Saliency
from viscnn.attribution.smoothgrad import SmoothGrad
from viscnn.errors import ViscnnError

METHODS: Dict[str, Type[Attribution]] = {
    "saliency": Saliency, "gradient": Gradient, "input_x_gradient": InputXGradient,
    "deconvnet": Deconvolution, "guided_backprop": GuidedBackprop,
    "gradcam": GradCAM, "guided_gradcam": GuidedGradCAM, "cam": CAM,
    "integrated_gradients": IntegratedGradients, "smoothgrad": SmoothGrad, "occlusion": Occlusion,
    "gradcam_plusplus": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
}
ALIASES = {"grad_x_input": "input_x_gradient", "deconvolution": "deconvnet", "guided": "guided_backprop",
           "grad_cam": "gradcam", "guided_grad_cam": "guided_gradcam", "ig": "integrated_gradients",
           "gradcam++": "gradcam_plusplus", "grad_cam++": "gradcam_plusplus", "gradcampp": "gradcam_plusplus",
           "xgrad_cam": "xgradcam", "layer_cam": "layercam", "smooth_grad": "smoothgrad"}
LAYERED = ("gradcam", "guided_gradcam", "gradcam_plusplus", "xgradcam", "layercam")  # methods that take a layer


def canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ViscnnError(f"unknown attribution method {name!r}; methods: {', '.join(METHODS)}, gradcam_crop")
    return key


def make_method(name: str, model: ModelLike, layer: Optional[str] = None, classes=None, device=None) -> Attribution:
    """An attribution method by name; ``layer`` is used by the Grad-CAM methods only."""
    key = canonical(name)
    if key in LAYERED:
        return METHODS[key](model, layer=layer, classes=classes, device=device)
    return METHODS[key](model, classes=classes, device=device)
