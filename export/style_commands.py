"""`facegate style optimize|train|export|bench`: neural style transfer on the workstation (PyTorch).

Registered through export/cli.py's COMMAND_MODULES; `python -m export.style_commands …` runs the same
commands without that hook. The work itself is in export/style/ (one module per job).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.errors import FacegateError


def _costs(args: argparse.Namespace):
    from export.style.costs import CostSettings

    d = CostSettings().to_dict()
    for key in ("alpha", "beta", "tv", "smoothing", "temperature", "style_size"):
        value = getattr(args, key, None)
        if value is not None:
            d[key] = value
    return CostSettings.from_dict(d)


def _cost_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, help="content weight α (default 1)")
    p.add_argument("--beta", type=float, help="style weight β (default 1e8)")
    p.add_argument("--tv", type=float, help="total-variation weight (default 0.1)")
    p.add_argument("--smoothing", choices=("none", "softmax"), help="activation smoothing (default none)")
    p.add_argument("--temperature", type=float, help="softmax smoothing temperature (default 1)")
    p.add_argument("--style-size", type=int, help="the painting's longer side in pixels (default 512)")
    p.add_argument("--weights", type=Path, help="MobileNetV2 state dict (default: $FACEGATE_MOBILENET_V2 or "
                   "<data>/models/mobilenet_v2-b0353104.pth)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def cmd_optimize(args: argparse.Namespace) -> int:
    import torch

    from export.style.costs import build_cost
    from export.style.images import fit_stride, load_image, save_image
    from export.style.optimize import optimize, save_curve

    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    cost = build_cost(args.style, _costs(args), args.weights, device=args.device)
    content = load_image(args.content, longer=args.size).to(args.device)
    result = optimize(cost, fit_stride(content, 1), steps=args.steps, lr=args.lr, init=args.init,
                      method=args.method, seed=args.seed, progress=not args.json)
    save_image(result.image, args.out)
    if args.curve:
        save_curve(result.history, args.curve)
    last = result.history[-1]
    data = {"out": str(args.out), "steps": args.steps, "method": args.method, "init": args.init, **last,
            "curve": str(args.curve) if args.curve else None}
    print(json.dumps(data, indent=2) if args.json else
          f"wrote {args.out}: J {last['J']:.6g} (content {last['content']:.6g}, style {last['style']:.6g}, "
          f"tv {last['tv']:.6g}) after {args.steps} {args.method} steps, {last['seconds']:.1f} s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from export.style.train import TrainSettings, train

    style = Path(args.style)
    if not style.is_file():
        raise FacegateError(f"{style}: no such painting")
    content = tuple(str(c) for c in (args.content or [_default_lfw()]))
    settings = TrainSettings(name=args.name or style.stem, style=str(style.resolve()), content=content,
                             size=args.size, load_size=args.load_size, zoom=tuple(args.zoom),
                             batch=args.batch, lr=args.lr, iterations=args.iterations,
                             minutes=args.minutes, channels=tuple(args.channels), res_blocks=args.res_blocks,
                             max_images=args.max_images, seed=args.seed, init=str(args.init or ""),
                             log_every=args.log_every,
                             checkpoint_every=args.checkpoint_every, costs=_costs(args))
    if args.device == "cpu" and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = train(settings, args.out, device=args.device, resume=args.resume, weights=args.weights,
                    progress=not args.json, workers=args.workers)
    print(json.dumps(summary, indent=2) if args.json else
          f"{summary['name']}: {summary['iterations']} iterations in {summary['seconds']} s; "
          f"checkpoint {summary['checkpoint']}, log {summary['log']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edge.paths import model_dir
    from export.style.bundle import export_style
    from export.style.reference import load_reference

    out = args.out or (None if args.ship else model_dir())
    reference = load_reference(args.reference)
    rows = [export_style(ckpt, out, tile=args.tile, overlap=args.overlap, ship=args.ship, paintings=args.paintings,
                         reference=reference, weights=args.weights,
                         name=args.name if len(args.checkpoint) == 1 else None) for ckpt in args.checkpoint]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for r in rows:
            p, loss = r["parity"], r["parity"]["style_loss"]
            where = r["onnx"] + (f" + {r['tflite']}" if r["tflite"] else "")
            ratio = f"; style loss ratio {loss['mean_ratio']:.2f} (max {loss['max_ratio']:.2f})" \
                if "mean_ratio" in loss else ""
            print(f"{r['style']}: {where}; ONNX fp16 vs PyTorch PSNR ≥ {p['min_psnr_db_onnx_torch']:.1f} dB"
                  + (f", ONNX vs TFLite ≥ {p['min_psnr_db_onnx_tflite']:.1f} dB" if r["tflite"] else "")
                  + f"{ratio} — {'PASS' if p['passed'] else 'FAIL'}")
    return 0 if all(r["parity"]["passed"] for r in rows) else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from edge.paths import data_dir
    from export.style.bench import bench
    from export.style.content import default_portraits
    from export.style.costs import CostSettings
    from export.style.reference import BenchStyle, load_reference, matches, reference_style_losses
    from export.style.train import load_checkpoint

    contents = list(args.content_images) if args.content_images else default_portraits(args.lfw)
    if len(contents) < 5 and not args.allow_few:
        raise FacegateError("the benchmark needs at least 5 content portraits")
    if args.reference_out:
        if not args.checkpoint:
            raise FacegateError("--reference-out needs the styles' --checkpoint files (their costs)")
        styles = []
        for ckpt in args.checkpoint:
            s = load_checkpoint(ckpt)["settings"]
            painting = (args.paintings / Path(s["style"]).name) if args.paintings else Path(s["style"])
            styles.append(BenchStyle(s["name"], painting, CostSettings.from_dict(s["costs"])))
        ref = reference_style_losses(styles, contents, size=args.size, steps=args.steps, lr=args.lr,
                                     device=args.device, weights=args.weights, progress=not args.json)
        Path(args.reference_out).write_text(json.dumps(ref, indent=2) + "\n")
        print(json.dumps(ref, indent=2) if args.json else f"wrote {args.reference_out}")
        return 0
    if not args.styles:
        from edge.stylize import installed_styles

        args.styles = installed_styles()
        if not args.styles:
            raise FacegateError("no style bundles installed (facegate style export --checkpoint …)")
    reference = None
    if not args.compute_reference:
        reference = load_reference(args.reference)
        if not matches(reference, args.size, args.steps, args.lr):
            where = args.reference or "the shipped reference"
            if args.reference:
                raise FacegateError(f"{where}: computed at size/steps/lr {reference.get('size')}/"
                                    f"{reference.get('steps')}/{reference.get('lr')}, not "
                                    f"{args.size}/{args.steps}/{args.lr}")
            reference = None  # the shipped one is for the defaults; other settings compute their own
    result = bench(args.styles, contents, args.paintings or data_dir() / "style", size=args.size, lr=args.lr,
                   steps=args.steps, max_steps=args.max_steps, reference=reference, runtime=args.runtime,
                   grid=args.grid, weights=args.weights, progress=not args.json)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.size}², one thread, {len(contents)} portraits × {len(args.styles)} styles: feed-forward "
              f"{result['feedforward_ms']:.0f} ms; optimisation to the same J {result['optimize_s']:.1f} s; "
              f"speedup {result['speedup']:.1f}× (min {result['speedup_min']:.1f}); style loss ratio "
              f"{result['style_loss_ratio']:.2f} (max {result['style_loss_ratio_max']:.2f}); Gram-nearest painting "
              f"correct {result['gram_nearest_correct']}" + (f"; grid {result['grid']}" if "grid" in result else ""))
    return 0


def _default_lfw() -> Path:
    from edge.paths import data_dir

    return data_dir() / "lfw" / "images"


def add_commands(subs: dict[str, argparse._SubParsersAction]) -> None:
    style = subs["style"]

    p = style.add_parser("optimize", help="stylise one image by gradient descent on its pixels (Gatys et al.)")
    p.add_argument("content", type=Path)
    p.add_argument("style", type=Path, help="the painting")
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=512, help="content's longer side (default 512)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate, pixels in [0, 1] (default 0.01)")
    p.add_argument("--method", choices=("adam", "lbfgs"), default="adam")
    p.add_argument("--init", choices=("content", "random"), default="content", help="G starts as C or as noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve", type=Path, help="save the loss curve: .csv, or .png for a plot")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true")
    _cost_options(p)
    p.set_defaults(func=cmd_optimize)

    p = style.add_parser("train", help="train a feed-forward style network on content images")
    p.add_argument("--style", required=True, type=Path, metavar="IMG", help="the painting")
    p.add_argument("--content", type=Path, action="append", help="content folder (repeatable; default LFW)")
    p.add_argument("--name", help="run name (default: the painting's file stem)")
    p.add_argument("--out", type=Path, default=Path("style_runs"), help="checkpoint/log folder")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--load-size", type=int, default=0,
                   help="decode images at this side, then crop --size² from them (default: --size, no crop)")
    p.add_argument("--zoom", type=float, nargs=2, default=[1.0, 1.0], metavar=("MIN", "MAX"),
                   help="zoom each batch by a log-uniform factor in [MIN, MAX] before cropping (default 1 1)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--iterations", type=int, default=20000)
    p.add_argument("--minutes", type=float, default=0.0, help="stop after this wall-clock time (0: no limit)")
    p.add_argument("--channels", type=int, nargs=3, default=[16, 32, 64])
    p.add_argument("--res-blocks", type=int, default=5)
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, metavar="CKPT",
                   help="start from this style checkpoint's weights (same channels/res blocks; fresh optimiser)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from <out>/<name>.pt")
    p.add_argument("--workers", type=int, default=8, help="image decoding threads")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true")
    _cost_options(p)
    p.set_defaults(func=cmd_train)

    p = style.add_parser("export", help="checkpoint → ONNX fp16 + TFLite bundles with parity and style-loss figures")
    p.add_argument("--checkpoint", type=Path, action="append", required=True)
    p.add_argument("--out", type=Path, help="bundle folder (default: the model directory, i.e. installed; "
                   "with --ship: the package's edge/models/styles/)")
    p.add_argument("--ship", action="store_true",
                   help="write only the ONNX fp16 bundle, as package data the registry finds with no install step")
    p.add_argument("--name", help="style name (default: the run's name; one checkpoint only)")
    p.add_argument("--tile", type=int, default=512, help="TFLite input size and device tile (default 512)")
    p.add_argument("--overlap", type=int, default=64, help="device tile overlap (default 64)")
    p.add_argument("--paintings", type=Path, help="painting folder (default <data>/style)")
    p.add_argument("--reference", type=Path, help="reference style losses (default: the shipped ones)")
    p.add_argument("--weights", type=Path, help="MobileNetV2 state dict for the style-loss figures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = style.add_parser("bench", help="feed-forward vs optimisation at 512², one thread; contents × styles grid")
    p.add_argument("--styles", nargs="+", help="installed styles (default: all)")
    p.add_argument("--content-images", type=Path, nargs="+", help="portraits (default: 5 held-out LFW)")
    p.add_argument("--lfw", type=Path, help="LFW images folder for the default portraits")
    p.add_argument("--paintings", type=Path, help="painting folder (default <data>/style)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.01, help="Adam's fixed learning rate (default 0.01)")
    p.add_argument("--steps", type=int, default=500, help="steps for the reference style loss (default 500)")
    p.add_argument("--max-steps", type=int, default=1000,
                   help="stop matching J after this many steps (speedup then a lower bound; default 1000)")
    p.add_argument("--runtime", choices=("onnxruntime", "litert"), default="onnxruntime")
    p.add_argument("--reference", type=Path, help="reference style losses computed earlier (--reference-out; "
                   "default: the shipped export/style/reference_losses.json, used when size/steps/lr match)")
    p.add_argument("--compute-reference", action="store_true",
                   help="compute the reference style losses here (about an hour on one core)")
    p.add_argument("--reference-out", type=Path, help="only compute the reference losses (any --device)")
    p.add_argument("--checkpoint", type=Path, nargs="+", help="with --reference-out: the styles' checkpoints")
    p.add_argument("--grid", type=Path, help="write the contents × styles PNG grid here")
    p.add_argument("--out-json", type=Path, help="also write the result JSON here")
    p.add_argument("--allow-few", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    _cost_options(p)
    p.set_defaults(func=cmd_bench)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.style_commands")
    groups = parser.add_subparsers(dest="group", required=True)
    subs = {"style": groups.add_parser("style").add_subparsers(dest="style_command", required=True)}
    add_commands(subs)
    args = parser.parse_args(["style", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except FacegateError as exc:
        print(f"facegate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
