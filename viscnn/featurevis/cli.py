"""``viscnn featurevis``: render objectives (or a whole layer) to PNGs plus a .npy/.json pair.

    viscnn featurevis --model fmnist --objective conv3:5 --objective "conv2:4->1@center" --out /tmp/fv
    viscnn featurevis --model torchvision:alexnet --layer features.3 --steps 64 --out /tmp/fv

Size and normalisation default to a prepped model's manifest (otherwise 224x224, ImageNet stats
for 3 channels, none for 1); ``--validate-fmnist N`` compares with N Fashion-MNIST test images.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_featurevis_cmd(sub) -> None:
    from viscnn.cli import add_model_args

    p = sub.add_parser("featurevis", help="feature visualisations of units, neurons and kernel edges")
    add_model_args(p)
    p.add_argument("--objective", action="append", default=[],
                   help="LAYER:CH, LAYER:CH@Y,X, LAYER:IN->OUT[@center], -OBJ, 0.5*A + B (repeatable)")
    p.add_argument("--layer", help="render every channel of this layer")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--validate-fmnist", type=int, default=0, metavar="N",
                   help="record the best value over N Fashion-MNIST test images and whether each image beats it")
    p.add_argument("--out", required=True, help="output folder (featurevis.npy, featurevis.json, NNN.png)")
    p.set_defaults(func=run)


def _manifest(spec: str, models_dir):
    """A prepped model's manifest, or the --config/--channels/--mean/--std given for another spec."""
    from viscnn.model_spec import prepped_manifest

    if ":" in spec or ".py" in spec:
        return prepped_manifest(spec, models_dir)
    from viscnn.prepped import PreppedModel

    return PreppedModel.open(spec, models_dir).manifest


def run(args) -> int:
    from PIL import Image

    from viscnn.errors import ViscnnError
    from viscnn.featurevis.render import in_channels_of, render, render_layer
    from viscnn.io import atomic_save_npy, atomic_write_text
    from viscnn.model_spec import load_model

    if bool(args.objective) == bool(args.layer):
        raise ViscnnError("give --objective (one or more) or --layer, not both")
    model = load_model(args.model, args.weights, args.models_dir)
    man = _manifest(args.model, args.models_dir)
    c = in_channels_of(model)
    size = tuple(args.size) if args.size else (tuple(man["input_shape"][1:]) if man else (224, 224))
    if man and man.get("normalize"):
        norm = (man["normalize"]["mean"], man["normalize"]["std"])
    else:
        norm = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if c == 3 else None
    kw = dict(size=size, steps=args.steps, seed=args.seed, batch_size=args.batch_size, normalize=norm,
              device=args.device, progress=True)
    res = render_layer(model, args.layer, **kw) if args.layer else render(model, args.objective, **kw)
    if args.validate_fmnist:
        from viscnn.data.fashion_mnist import load_fashion_mnist
        from viscnn.featurevis.data import array_batches
        from viscnn.featurevis.validate import validate

        images = load_fashion_mnist("test")[0][:args.validate_fmnist]
        validate(res, model, array_batches(images, 500), norm, args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(out / "featurevis.npy", res.images)
    atomic_write_text(out / "featurevis.json", json.dumps(res.to_json()))
    for k, img in enumerate(res.images):
        Image.fromarray(img).save(out / f"{k:03d}.png")
    for k, name in enumerate(res.objectives):
        extra = ""
        if res.best_real is not None:
            extra = f"  best real {res.best_real[k]:.4g}  {'beats real' if res.beats_real[k] else 'DOES NOT beat real'}"
        print(f"{k:03d}.png  {name}: {res.start[k]:.4g} -> {res.objective[k]:.4g}{extra}")
    return 0
