"""``viscnn serve [NAME]``: the microscope app on a prepped model."""

from __future__ import annotations


def add_serve_cmd(sub) -> None:
    p = sub.add_parser("serve", help="serve the microscope app on a prepped model")
    p.add_argument("name", nargs="?", default="fmnist", help="prepped model to open (default fmnist)")
    p.add_argument("--models-dir", help="folder of prepped models (default: the repo's prepped_models/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--snapshot", help="open this snapshot JSON (written by 'Export snapshot')")
    p.add_argument("--debug", action="store_true", help="Dash debug mode (auto-reload, error overlay)")
    p.set_defaults(func=run)


def run(args) -> int:
    from viscnn.app.server import create_app

    app = create_app(args.models_dir, args.name, snapshot=args.snapshot)
    print(f"viscnn: serving {args.name} at http://{args.host}:{args.port}/", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug)
    return 0
