"""What the Attribution view shows, as pure functions: the chosen methods on one input image.

Every map is the raw attribution w.r.t. the model's input tensor (``viscnn.attribution``), reduced to
2D for display: the channel sum for signed methods, the channel max of |value| for magnitudes
(Simonyan et al.'s saliency). Grad-CAM-like maps are already 2D (upsampled to the input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from viscnn.errors import ViscnnError

# URL value -> (label, needs a layer, one-line what-it-is)
METHODS: Dict[str, Tuple[str, bool, str]] = {
    "saliency": ("Saliency |grad|", False, "max over channels of |d target / d input| (Simonyan et al.)"),
    "gradient": ("Gradient", False, "signed d target / d input, summed over channels"),
    "gradxinput": ("Gradient x input", False, "input * gradient, summed over channels"),
    "deconvnet": ("DeconvNet", False, "Zeiler-Fergus back-projection: every ReLU rectifies the backward signal"),
    "guided": ("Guided backprop", False, "both ReLU masks: forward positive and backward positive (Springenberg)"),
    "gradcam": ("Grad-CAM", True, "ReLU(sum_c mean(dY/dA_c) A_c) at the layer, bilinear to the input"),
    "guided_gradcam": ("Guided Grad-CAM", True, "guided backprop x upsampled Grad-CAM"),
    "cam": ("CAM", False, "class weights x last conv maps (only for GAP -> one Linear heads)"),
    "ig": ("Integrated gradients", False, "(x - 0) x the gradient averaged on the straight path from the zero input "
           "(the dataset mean after normalisation), 32 Gauss-Legendre steps (Sundararajan et al.)"),
    "smoothgrad": ("SmoothGrad", False, "|grad| averaged over 25 noisy copies, noise sd 15% of the image's range "
                   "(Smilkov et al.), max over channels"),
    "occlusion": ("Occlusion", False, "target(x) - target(x with a window set to 0, the dataset mean after "
                  "normalisation), averaged over the windows covering each pixel (Zeiler & Fergus), summed over channels"),
    "gradcampp": ("Grad-CAM++", True, "ReLU(sum_c w_c A_c), w_c = sum_ij alpha_ij ReLU(dY/dA_c,ij) with Eq. 19's "
                  "alpha (Chattopadhay et al.)"),
    "xgradcam": ("XGrad-CAM", True, "ReLU(sum_c w_c A_c), w_c = sum(dY/dA_c * A_c) / sum(A_c) (Fu et al.)"),
    "layercam": ("Layer-CAM", True, "ReLU(sum_c ReLU(dY/dA_c) * A_c), pixel by pixel (Jiang et al.)"),
}
DEFAULT_METHODS = ("saliency", "guided", "gradcam")


@dataclass
class MapResult:
    method: str
    label: str
    map2d: Optional[np.ndarray]  # float64 [H, W]; None when the method failed
    signed: bool
    note: str  # what it is, or the error


@dataclass
class AttributionResult:
    maps: List[MapResult]
    target: str  # the target as used ("class:K (name)")
    layer: str  # the Grad-CAM layer as used
    crop_box: Optional[Tuple[int, int, int, int]]  # (y0, x0, y1, x1) of the Grad-CAM crop
    crop_mask: Optional[np.ndarray]  # bool [H, W]


# URL value -> (viscnn.attribution method name, attribute() keywords)
_LIBRARY = {"saliency": ("saliency", {"abs": True}), "gradient": ("gradient", {}),
            "gradxinput": ("input_x_gradient", {}), "deconvnet": ("deconvnet", {}), "guided": ("guided_backprop", {}),
            "gradcam": ("gradcam", {}), "guided_gradcam": ("guided_gradcam", {}), "cam": ("cam", {}),
            "ig": ("integrated_gradients", {}), "smoothgrad": ("smoothgrad", {}), "occlusion": ("occlusion", {}),
            "gradcampp": ("gradcam_plusplus", {}), "xgradcam": ("xgradcam", {}), "layercam": ("layercam", {})}


def _make(method: str, model, layer: Optional[str], classes):
    from viscnn.attribution.methods import make_method

    if method not in _LIBRARY:
        raise ViscnnError(f"unknown attribution method {method!r}; use one of {', '.join(METHODS)}")
    name, kw = _LIBRARY[method]
    return make_method(name, model, layer=layer or None, classes=classes), dict(kw)


def resolve_target(target: str, logits: np.ndarray, classes: Sequence[str]):
    """The target to explain: the text as given, or the predicted class when empty."""
    t = (target or "").strip()
    if t:
        return t, t
    k = int(np.argmax(logits))
    name = classes[k] if classes and k < len(classes) else str(k)
    return f"class:{k}", f"class:{k} ({name}, the predicted class)"


def attribute_image(model, x: torch.Tensor, methods: Sequence[str], target: str, layer: str = "",
                    classes: Sequence[str] = (), threshold: float = 0.5, net=None) -> AttributionResult:
    """Run ``methods`` on one model input ``x`` [1, C, H, W]. One method's error (e.g. CAM on a model
    without a GAP -> Linear head) is reported in its panel; the others still run. ``net``: ``model``'s
    traced working copy when the caller keeps one (tracing is the slow part for a big model)."""
    from viscnn.attribution.base import traced
    from viscnn.attribution.crop import gradcam_crop

    with torch.no_grad():
        logits = model(x)
    logits = (logits[0] if isinstance(logits, (tuple, list)) else logits).reshape(-1).numpy()
    tgt, shown = resolve_target(target, logits, classes)
    out: List[MapResult] = []
    cam_map = None
    used_layer = layer
    net = net if net is not None else traced(model)
    from viscnn.attribution.saliency import Gradient

    Gradient(net, classes=list(classes) or None).targets(tgt, x)  # a bad target is one error for all methods
    for m in methods:
        if m not in METHODS:
            out.append(MapResult(m, m, None, True, f"unknown method {m!r}"))
            continue
        label, _, what = METHODS[m]
        try:
            meth, kw = _make(m, net, layer, list(classes) or None)
            a = meth.attribute(x, tgt, **kw).detach().double().numpy()[0]
        except ViscnnError as e:
            out.append(MapResult(m, label, None, True, str(e)))
            continue
        signed = bool(meth.signed)
        if a.ndim == 3 and a.shape[0] == 1:
            m2 = a[0]
        else:
            m2 = a.sum(0) if signed else np.abs(a).max(0)
        if METHODS[m][1]:  # the Grad-CAM family: say which layer (the dropdown may say "auto")
            used_layer = getattr(meth, "gradcam", meth).layer_for(tuple(x.shape[1:]))[0]
            what = f"{what}; at {used_layer}"
        if m == "gradcam":
            cam_map = torch.from_numpy(m2.reshape(1, 1, *m2.shape))
        elif m == "cam":
            what = f"{what}; features of {meth.layer}"
        elif m == "ig":
            what = f"{what}; {_completeness(meth, x, tgt, a)}"
        elif m == "occlusion":
            (_, wh, ww), pos = meth.positions(tuple(x.shape[1:]))
            what = f"{what}; {wh}x{ww} windows at {len(pos)} positions"
        out.append(MapResult(m, label, m2, signed, what))
    box = mask = None
    if cam_map is not None:
        c = gradcam_crop(x.double(), cam_map, threshold)
        y0, x0, y1, x1 = (int(v) for v in c.boxes[0])
        box = (y0, x0, y1, x1) if y1 > y0 else None
        mask = c.mask[0, 0].numpy()
    return AttributionResult(out, shown, used_layer, box, mask)


def _completeness(ig, x: torch.Tensor, target: str, a: np.ndarray) -> str:
    """How well the path integral converged: IG's attributions sum to target(x) - target(0) when exact."""
    d = float(ig.convergence_delta(x, torch.from_numpy(a).unsqueeze(0), target)[0])
    total = float(a.sum())
    return f"completeness: sum {total:.4g} vs target(x) - target(0) = {total - d:.4g} (delta {d:.2g})"


def unit_deconvnet(net, pm, layer: str, channel: int, images: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Zeiler & Fergus's figure for one unit: DeconvNet of the unit's strongest activation in each image
    (uint8 pictures, as the prepped model sees them), as 2D maps (channel sum, signed)."""
    from viscnn.app.activations import to_tensor
    from viscnn.attribution.deconvnet import Deconvolution, deconvnet_of_unit

    c = pm.input_shape[0]
    xs = []
    for a in images:
        a = np.asarray(a)
        if c == 1 and a.ndim == 3:
            a = a.mean(-1).round().astype(np.uint8)  # exemplars are stored as RGB
        xs.append(to_tensor(a, pm))
    d = Deconvolution(net)
    out = deconvnet_of_unit(d, torch.cat(xs), layer, channel).detach().double().numpy()
    return [o.sum(0) for o in out]
