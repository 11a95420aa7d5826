"""`facegate train triplet|verifier`: metric learning and verification heads on the workstation (PyTorch, CPU).

Registered through export/cli.py's COMMAND_MODULES; `python -m export.train_commands train …` runs the same
commands without that hook.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge.errors import FacegateError

VIEW1 = ("pairsDevTrain.txt", "pairsDevTest.txt")


def _pairs_beside(images: Path, name: str, given: Path | None) -> Path:
    path = given or Path(images).parent / name
    if not path.is_file():
        raise FacegateError(f"{path}: missing (name it with the matching option)")
    return path


def _dump(data: Any) -> str:
    import numpy as np

    def default(v: Any) -> Any:
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, Path):
            return str(v)
        raise TypeError(type(v).__name__)

    return json.dumps(data, indent=2, default=default)


# -- triplet -----------------------------------------------------------------------------------------------------
def cmd_triplet(args: argparse.Namespace) -> int:
    from edge.eval.lfw import read_pairs
    from export.train import triplet

    dev_train = read_pairs(_pairs_beside(args.images, VIEW1[0], args.dev_train))
    dev_test = read_pairs(_pairs_beside(args.images, VIEW1[1], args.dev_test))
    settings = triplet.TripletSettings(
        mode=args.mode, epochs=args.epochs, p=args.p, k=args.k, margin=args.margin, mining=args.mining, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, augment=not args.no_augment, size=(args.size, args.size),
        dim=args.dim or (128 if args.mode == "net" else 64), backbone=args.backbone, threads=args.threads,
        init=args.init)
    progress = not args.quiet
    result: dict[str, Any]
    if args.cv:  # View 2, ten folds: projection heads only (the from-scratch net is judged on View 1)
        if args.mode != "head":
            raise FacegateError("--cv evaluates projection heads (--mode head)")
        from export.train.data import embeddings, list_people

        pairs = read_pairs(args.cv)
        rels = [r for _, rs in list_people(args.images) for r in rs]
        vecs = embeddings(args.images, rels, settings.backbone, cache_dir=args.cache)
        result = {"mode": "head", "protocol": f"{args.cv.name}, per fold a head trained on the identities the "
                  "fold does not name, threshold from the other nine folds",
                  **triplet.cross_validate_projection(pairs, vecs, settings, args.out / "cv", progress=progress)}
        text = (f"{settings.backbone} → {settings.dim}: accuracy {result['head']['accuracy']:.4f} ± "
                f"{result['head']['accuracy_sem']:.4f} (sem) vs backbone {result['backbone']['accuracy']:.4f}; "
                f"Δ {result['delta_pp']:+.3f} pp")
    else:
        holdout = read_pairs(args.holdout) if args.holdout else dev_test
        run = triplet.run_net if args.mode == "net" else triplet.run_head
        result = run(args.images, args.out, settings, holdout, dev_train, dev_test, cache_dir=args.cache,
                     resume=args.resume, progress=progress)
        h = result["history"]
        text = (f"{args.mode}: {len(h) - 1} epochs, loss {h[1]['loss']:.4f} → {h[-1]['loss']:.4f}, active triplets "
                f"{h[1]['active_fraction']:.3f} → {h[-1]['active_fraction']:.3f}; DevTest accuracy (threshold from "
                f"DevTrain) {h[0]['dev_test_accuracy']:.4f} at epoch 0 → {h[-1]['dev_test_accuracy']:.4f}")
        if args.export:
            bundles = export_trained(args, settings, result)
            result["bundles"] = [{"bundle": str(p), "passed": ok} for p, ok in bundles]
            text += "; exported " + ", ".join(p.name for p, _ in bundles)
    result["settings"] = settings.to_dict()
    print(_dump(result) if args.json else text)
    return 0


def export_trained(args: argparse.Namespace, settings: Any, result: dict[str, Any]) -> list[tuple[Path, bool]]:
    """Through the `torch` recipe: the net, or the backbone + head chained into one embedder."""
    import torch

    from export.nets import small_embed
    from export.recipes import torch_module

    name = args.name or ("small-embed" if settings.mode == "net" else f"{settings.backbone}-proj{settings.dim}")
    if settings.mode == "net":
        factory, weights = "export.nets.small_embed:small_embed", Path(result["weights"])
        spec = torch_module.ModelSpec(name=name, task="embed", size=settings.size, colour="RGB",
                                      mean=small_embed.SMALL_MEAN, std=small_embed.SMALL_STD, template="sface")
    else:
        factories = {"sface": ("projected_sface", (112, 112), "sface"),
                     "dlib-resnet": ("projected_dlib", (150, 150), "dlib-resnet")}
        if settings.backbone not in factories or settings.dim != 64:
            raise FacegateError("export of a head is offered for sface / dlib-resnet backbones at --dim 64")
        func, size, template = factories[settings.backbone]
        module = getattr(small_embed, func)()
        module.head.load_state_dict(torch.load(result["head"], weights_only=True))
        weights = Path(args.out) / "projected.pt"
        torch.save(module.state_dict(), weights)
        factory = f"export.nets.small_embed:{func}"
        from edge.models.registry import Registry

        m = Registry().manifest(settings.backbone)
        spec = torch_module.ModelSpec(name=name, task="embed", size=size, colour=m.input.colour,
                                      mean=m.normalisation.mean, std=m.normalisation.std, template=template)
    variants = tuple(v.strip() for v in args.variants.split(","))
    return torch_module.export(args.export, factory, spec, weights=weights, variants=variants, images=args.images,
                               calib_images=args.calib_images, parity_images=args.parity_images)


# -- verifier ----------------------------------------------------------------------------------------------------
def cmd_verifier(args: argparse.Namespace) -> int:
    from edge.eval.lfw import pair_identities, read_pairs
    from export.train import verifier as V
    from export.train.data import list_people

    embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]
    pairs = read_pairs(args.pairs)
    rels = sorted({r for _, rs in list_people(args.images) for r in rs})
    vectors = V.load_vectors(args.images, rels, embedders, cache_dir=args.cache)
    settings = V.HeadSettings(features=tuple(args.features.split(",")), l2=args.l2, l2_cos=args.l2_cos,
                              extra_pairs=args.extra_pairs)
    result: dict[str, Any] = {"embedders": embedders, "pairs_file": args.pairs.name}
    if args.tune:
        dev_train = read_pairs(_pairs_beside(args.images, VIEW1[0], args.dev_train))
        dev_test = read_pairs(_pairs_beside(args.images, VIEW1[1], args.dev_test))
        if args.pairs.name in VIEW1 and args.cv:
            raise FacegateError("--tune chooses settings on View 1: evaluate them on another pairs file")
        settings, rows = V.tune(dev_train, dev_test, vectors, embedders, V.default_grid(args.extra_pairs))
        result["tuning"] = {"protocol": "View 1 both ways (DevTrain→DevTest, DevTest→DevTrain), pooled", "grid": rows}
    result["settings"] = {**V.asdict(settings)}
    if args.cv:
        folds = sorted({p.fold for p in pairs})
        if len(folds) != args.cv:
            raise FacegateError(f"{args.pairs} has {len(folds)} folds, not --cv {args.cv}")
        if args.pairs.name in VIEW1:
            raise FacegateError("--cv is the View-2 protocol: use pairs.txt")
        cv = V.cross_validate_head(pairs, vectors, embedders, settings)
        cv.pop("logits")
        base = {e: V.cosine_cross_validate(pairs, vectors[e]) for e in embedders}
        result.update(cv, protocol="LFW View 2: per fold, head trained on the other nine folds' pairs"
                      + (f" (+ {settings.extra_pairs}+{settings.extra_pairs} pairs from their identities' images)"
                         if settings.extra_pairs else "") + ", threshold from those folds, accuracy on the fold",
                      cosine_baselines={e: {k: round(v, 4) for k, v in b.items()} for e, b in base.items()})
        text = (f"{'+'.join(embedders)} head: accuracy {cv['accuracy']:.4f} ± {cv['accuracy_sem']:.4f} (sem), std "
                f"{cv['accuracy_std']:.4f} over {cv['folds']} folds; cosine alone: "
                + ", ".join(f"{e} {b['accuracy']:.4f}" for e, b in base.items()))
    else:
        trained = V.fit_on(pairs, vectors, embedders, settings)
        trained.provenance = {"trained_on": {"pairs_file": args.pairs.name, "identities": len(pair_identities(pairs)),
                                             "extra_pairs_per_class": settings.extra_pairs}}
        text = f"trained a {'+'.join(embedders)} head on {args.pairs.name}"
        if args.export:
            thresholds = None
            if args.calibrate_pairs:
                cal = read_pairs(args.calibrate_pairs)
                overlap = pair_identities(cal) & pair_identities(pairs)
                if overlap:
                    raise FacegateError(f"{args.calibrate_pairs.name} shares {len(overlap)} identities with the "
                                        "training pairs: calibrate on disjoint identities")
                thresholds = V.logit_thresholds(trained.folded(), vectors, cal, args.calibrate_pairs, args.far,
                                                args.fpir)
            # Parity on the calibration pairs when given: pairs the head was not trained on.
            parity_pairs = read_pairs(args.calibrate_pairs) if args.calibrate_pairs else pairs
            bundle = V.export_head(args.export, args.name, trained, vectors, parity_pairs, thresholds)
            parity = json.loads((bundle / "parity.json").read_text())
            result.update(bundle=str(bundle), passed=parity["passed"], parity=parity)
            text += f"; wrote {bundle} (parity {'PASS' if parity['passed'] else 'FAIL'})"
    print(_dump(result) if args.json else text)
    return 0


# -- registration ------------------------------------------------------------------------------------------------
def add_commands(subs: dict[str, argparse._SubParsersAction]) -> None:
    from export.train.triplet import INITS, MINING

    p = subs["train"].add_parser("triplet", help="triplet-loss training: a small net from scratch or a projection "
                                 "head on a frozen backbone (CPU)")
    p.add_argument("--images", type=Path, required=True, help="folder-per-person images (e.g. LFW images/)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pt, log.csv, settings.json")
    p.add_argument("--mode", choices=("net", "head"), default="net")
    p.add_argument("--backbone", default="sface", help="head mode: the frozen embedder (default: sface)")
    p.add_argument("--dim", type=int, help="embedding size (default: 128 for net, 64 for head)")
    p.add_argument("--init", choices=INITS, default="pca",
                   help="head mode: start from the principal directions (pca, default), the linear discriminant "
                        "directions (lda: most between-person per within-person spread) or a random orthogonal map")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--p", type=int, default=32, help="identities per batch (default: 32)")
    p.add_argument("--k", type=int, default=4, help="images per identity (default: 4)")
    p.add_argument("--margin", type=float, default=0.2, help="α (default: 0.2)")
    p.add_argument("--mining", choices=MINING, default="semi-hard")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="net mode: crop side in pixels (default: 64)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--holdout", type=Path, metavar="PAIRS",
                   help="identities never trained on (default: pairsDevTest.txt beside the images)")
    p.add_argument("--dev-train", type=Path, help="View-1 DevTrain (threshold), default beside the images")
    p.add_argument("--dev-test", type=Path, help="View-1 DevTest (accuracy), default beside the images")
    p.add_argument("--cv", type=Path, metavar="PAIRS",
                   help="head mode: LFW View-2 ten-fold evaluation against the backbone (pairs.txt)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--export", type=Path, metavar="DIR", help="write bundles through the torch recipe")
    p.add_argument("--name", help="bundle name (default: small-embed / <backbone>-proj<dim>)")
    p.add_argument("--variants", default="onnx-fp32", help="torch-recipe variants (default: onnx-fp32)")
    p.add_argument("--calib-images", type=int, default=100)
    p.add_argument("--parity-images", type=int, default=50)
    p.add_argument("--cache", type=Path, help="crop / embedding cache folder (default: <state>/cache/train)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_triplet)

    p = subs["train"].add_parser("verifier", help="logistic verification head over pair features of one or more "
                                 "embedders; LFW ten-fold evaluation or ONNX export")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--pairs", type=Path, required=True,
                   help="with --cv: pairs.txt (View 2); else the training pairs (e.g. pairsDevTrain.txt)")
    p.add_argument("--cv", type=int, metavar="FOLDS", help="LFW protocol: train on the other folds, test on each")
    p.add_argument("--embedders", default="sface", help="comma-separated, e.g. sface,dlib-resnet (fusion)")
    p.add_argument("--features", default="abs,cos", help="of abs, prod, chi2, cos (default: abs,cos)")
    p.add_argument("--l2", type=float, default=1000.0, help="penalty on the element-wise weights (default: 1000)")
    p.add_argument("--l2-cos", type=float, default=1.0, help="penalty on the cosine weights (default: 1)")
    p.add_argument("--extra-pairs", type=int, default=20000, metavar="N",
                   help="extra N matched + N mismatched training pairs from the training identities' images "
                        "(default: 20000)")
    p.add_argument("--tune", action="store_true", help="choose features / penalties on View 1 first")
    p.add_argument("--dev-train", type=Path)
    p.add_argument("--dev-test", type=Path)
    p.add_argument("--export", type=Path, metavar="DIR", help="write the head's ONNX bundle into DIR/<name>/")
    p.add_argument("--name", default="verifier", help="bundle name (default: verifier)")
    p.add_argument("--calibrate-pairs", type=Path, metavar="FILE",
                   help="pairs of identities disjoint from training for the head's thresholds (e.g. pairsDevTest.txt)")
    p.add_argument("--far", type=float, default=1e-3)
    p.add_argument("--fpir", type=float, default=0.01)
    p.add_argument("--cache", type=Path, help="embedding cache folder (default: <state>/cache/train)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verifier)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="facegate")
    groups = parser.add_subparsers(dest="group", required=True)
    subs = {"train": groups.add_parser("train").add_subparsers(dest="train_command", required=True)}
    add_commands(subs)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except FacegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
