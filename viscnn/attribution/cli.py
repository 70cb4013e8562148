"""``viscnn attribute``: pixel-space attributions of an image set, as arrays and PNG overlays.

  viscnn attribute --model SPEC [--weights F] [--models-dir D] --method NAME [--method NAME ...]
                   [--target T] --images SPEC [--input-size H W] [--layer L] [--threshold 0.5] --out DIR

Writes ``DIR/attributions.npy`` (float32 [N, C, H, W], the raw attribution w.r.t. the model's
input tensor; Grad-CAM and CAM maps are [N, 1, H, W] at the input size), or with several
methods ``DIR/attributions_METHOD.npy`` each; ``gradcam_crop`` writes the masked inputs and
``DIR/boxes.json``. One PNG per image and method (input | map | overlay): signed values on the
diverging map (red = positive, blue = negative), magnitudes on the sequential map.
"""

from __future__ import annotations

import json
from pathlib import Path

METHOD_HELP = ("saliency (|grad|), gradient, input_x_gradient, integrated_gradients (32 Gauss-Legendre steps, zero "
               "baseline), smoothgrad (25 samples, noise 15%%), occlusion (windows of 1/8 of the side, zero baseline), "
               "deconvnet, guided_backprop, gradcam, guided_gradcam, gradcam_plusplus, xgradcam, layercam, cam, gradcam_crop")


def add_attribute_cmd(sub) -> None:
    from viscnn.cli import add_model_args

    p = sub.add_parser("attribute", help="saliency, DeconvNet, guided backprop, CAM and Grad-CAM of an image set")
    add_model_args(p)
    p.add_argument("--method", action="append", required=True, metavar="NAME", help=METHOD_HELP + "; repeat for several")
    p.add_argument("--target", help="N (a raw logit, Captum's target) | N,N,... (one per image) | class:K | class:NAME | "
                                    "loss | unit:LAYER:CH | neuron:LAYER:CH:Y:X | linear combinations "
                                    "(default: each image's predicted class)")
    p.add_argument("--images", required=True, help="folder:PATH | PATH | tensor:FILE.pt (fed unchanged) | random:N[:SEED] | "
                                                  "fmnist:train|test[:CLASS][:N] | torchvision:NAME:ROOT")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                   help="input size (default: a tensor file's own size, the prepped model's, else 224 224)")
    p.add_argument("--layer", help="Grad-CAM layer, a module path (default: the last layer with a spatial map)")
    p.add_argument("--threshold", type=float, default=0.5, help="gradcam_crop: keep pixels whose normalised map exceeds this")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, help="use at most this many images")
    p.add_argument("--pngs", type=int, default=16, help="write PNG overlays for the first N images (0: none)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def _context(args):
    """(model, classes, normalize, prepped input shape or None), like ``viscnn circuit`` but without a graph."""
    from viscnn.model_spec import load_model, prepped_input_shape, prepped_manifest

    model = load_model(args.model, args.weights, args.models_dir)
    shape = prepped_input_shape(args.model, args.models_dir)
    meta = prepped_manifest(args.model, args.models_dir) or {}
    return model, meta.get("classes"), meta.get("normalize"), shape


def parse_cli_target(text):
    """None (predicted class), an int, a list of ints (``3,5,7``) or a target string."""
    if text is None or not text.strip() or text.strip() in ("pred", "predicted"):
        return None
    t = text.strip()
    parts = [s.strip() for s in t.split(",")]
    if len(parts) > 1 and all(s.isdigit() for s in parts):
        return [int(s) for s in parts]
    return int(t) if t.isdigit() else t


def _input_shape(args, src, model, prepped_shape):
    from viscnn.graph.build import infer_input_channels

    if args.input_size:
        c = prepped_shape[0] if prepped_shape else infer_input_channels(model)
        return (c, *args.input_size)
    if args.images.strip().startswith("tensor:") and len(src):
        first, _ = src.read(0, 1)
        s = tuple(first.shape)
        return s[1:] if len(s) == 4 else (1, *s[1:])
    if prepped_shape:
        return tuple(prepped_shape)
    return (infer_input_channels(model), 224, 224)


def run(args) -> int:
    import numpy as np

    from viscnn.attribution.crop import gradcam_crop
    from viscnn.attribution.methods import canonical, make_method
    from viscnn.attribution.traced import TracedModel
    from viscnn.data import open_images
    from viscnn.errors import ViscnnError
    from viscnn.io import atomic_save_npy, atomic_write_text

    names = list(dict.fromkeys("gradcam_crop" if m.strip().lower().replace("-", "_") == "gradcam_crop" else canonical(m)
                               for m in args.method))
    if args.batch_size < 1:
        raise ViscnnError("--batch-size must be >= 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise ViscnnError(f"--threshold {args.threshold} is outside [0, 1]")
    model, classes, normalize, prepped_shape = _context(args)
    src = open_images(args.images, prepped_shape or (3, 224, 224))
    shape = _input_shape(args, src, model, prepped_shape)
    if classes is None and src.classes:
        classes = src.classes
    target = parse_cli_target(args.target)
    n_total = len(src) if args.limit is None else min(len(src), args.limit)
    if isinstance(target, list) and len(target) != n_total:
        raise ViscnnError(f"--target gives {len(target)} classes for {n_total} images")
    net = TracedModel(model, args.device)
    methods = {n: make_method("gradcam" if n == "gradcam_crop" else n, net, layer=args.layer, classes=classes)
               for n in names}
    out = {n: [] for n in names}
    boxes, inputs, start = [], [], 0
    for x, y in src.batches(args.batch_size, shape, normalize, args.limit):
        tb = target[start:start + len(x)] if isinstance(target, list) else target
        start += len(x)
        for n, meth in methods.items():
            a = meth.attribute(x, tb, labels=y).detach()
            if n == "gradcam_crop":
                crop = gradcam_crop(x.to(a.device, a.dtype), a, args.threshold)
                boxes += crop.boxes.tolist()
                a = crop.masked
            out[n].append(a.float().cpu().numpy())
        if len(inputs) * args.batch_size < args.pngs:
            inputs.append(x.numpy())
    if start == 0:
        raise ViscnnError(f"no images in {args.images}")
    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    for n in names:
        arr = np.concatenate(out[n]).astype(np.float32)
        f = d / ("attributions.npy" if len(names) == 1 else f"attributions_{n}.npy")
        atomic_save_npy(f, arr)
        files[n] = f.name
        print(f"wrote {f} {list(arr.shape)}")
    meta = {"model": args.model, "images": args.images, "input_shape": list(shape), "target": args.target,
            "methods": names, "files": files, "layers": {}}
    for n, meth in methods.items():
        if hasattr(meth, "layer_for"):
            meta["layers"][n] = meth.layer_for(shape)[0]
        elif hasattr(meth, "gradcam"):
            meta["layers"][n] = meth.gradcam.layer_for(shape)[0]
        elif n == "cam":
            meta["layers"][n] = meth.layer
    if boxes:
        atomic_write_text(d / "boxes.json", json.dumps({"threshold": args.threshold, "boxes_y0x0y1x1": boxes}))
        print(f"wrote {d / 'boxes.json'}")
    atomic_write_text(d / "attributions.json", json.dumps(meta, indent=1))
    if args.pngs > 0 and inputs:
        n_png = _write_pngs(d, np.concatenate(inputs)[:args.pngs], out, methods)
        print(f"wrote {n_png} PNG overlays to {d}")
    return 0


def _write_pngs(d: Path, xs, out, methods) -> int:
    import numpy as np

    from viscnn.attribution.render import image_rgb, map_rgb, overlay, save_png, strip, to_2d

    count = 0
    for n, parts in out.items():
        arr = np.concatenate(parts)
        signed = methods[n].signed and n != "gradcam_crop"
        for i in range(min(len(xs), len(arr))):
            img = image_rgb(xs[i])
            if n == "gradcam_crop":  # the input where kept, white elsewhere
                kept = np.where(np.any(arr[i] != 0, axis=0)[..., None], img, np.uint8(255))
                pic = strip(img, kept)
            else:
                heat = map_rgb(to_2d(arr[i], signed), signed)
                pic = strip(img, heat, overlay(img, heat))
            save_png(d / f"{n}_{i:04d}.png", pic)
            count += 1
    return count
