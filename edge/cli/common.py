"""What every command group shares: one way to print (text or --json), one set of exit codes, option sets, and
the configuration the daemon reads.

Exit codes, everywhere: 0 yes / success, 1 a negative answer (different people, no match, not recognized,
spoof, a check that found faults), 2 an error (bad input, missing model or store, no face), printed as one line
on stderr.

Commands that use models, thresholds or the store read the same TOML file as the daemon (`--config`, default
the daemon's: $CONFIGURATION_DIRECTORY/facegate.toml, else the built-in defaults), so `facegate identify` and
the door decide with the same models, FPIR, minimum face size and store. An option given on the command line
wins over the file.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from edge.vision.detect import POLICIES
from edge.vision.rescue import RESCUE_MODES

YES, NO, ERROR = 0, 1, 2


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print `data` as JSON with --json, else `text`."""
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def bounded(kind: type, lo: float | None = None, hi: float | None = None):
    """An argparse type: a finite number of `kind` within [lo, hi] (NaN, infinities and out-of-range values are
    refused with exit status 2, like a wrong configuration value)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {span})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path,
                   help="the daemon's TOML configuration, for models, thresholds and the store (default: "
                        "$CONFIGURATION_DIRECTORY/facegate.toml, else built-in defaults)")


def recognition_options(p: argparse.ArgumentParser, policy: str = "best", verifier: str | None = None) -> None:
    """--config, the models (defaults from the configuration), --policy, --json."""
    config_option(p)
    p.add_argument("--model", help="embedder model name (default: models.embedder, else the manifests' default: "
                   "sface-int8; sface is fp32)")
    p.add_argument("--detector", help="detector model name (default: models.detector, yunet)")
    p.add_argument("--threads", type=bounded(int, 0, 64),
                   help="inference threads; 0 = one per embedder where the cores allow (default: models.threads, 0)")
    p.add_argument("--min-face", type=bounded(float, 8), metavar="PX",
                   help="smallest face to find, in image pixels (default: models.min_face_px, 40)")
    p.add_argument("--rescue", choices=RESCUE_MODES,
                   help="look again when the first detection pass finds no face: photos (every command's input "
                        "is a photo) or always, off (default: models.rescue, photos)")
    p.add_argument("--policy", choices=POLICIES, default=policy,
                   help=f"which face to use when several are found: best (confidence × size × centrality), "
                        f"largest, central, single (refuse) (default: {policy})")
    if verifier is not None:
        p.add_argument("--verifier", metavar="HEAD",
                       help=f"{verifier} (installed name or bundle folder; default: models.verifier, else the "
                            "embedder's cosine)")
        p.add_argument("--fusion", metavar="NAME",
                       help="score with a fusion of several embedders (e.g. fused: sface-int8 + dlib-resnet-int8, "
                            "fused-fp32: sface + dlib-resnet; default: models.fusion)")
    json_option(p)


def store_options(p: argparse.ArgumentParser) -> None:
    """--store and --key-file (defaults from the configuration). Left out of the namespace unless given, so a
    group and its actions can both take them (`store --store X list` and `store list --store X`)."""
    p.add_argument("--store", type=Path, default=argparse.SUPPRESS,
                   help="SQLite store (default: store.path, else <state dir>/facegate.db)")
    p.add_argument("--key-file", default=argparse.SUPPRESS,
                   help="AES key file for encryption at rest (default: store.key_file, else $FACEGATE_STORE_KEY)")


def settings(args: argparse.Namespace) -> Any:
    """The configuration, loaded once per command, with the command line's options put over it."""
    from edge import config

    cfg = getattr(args, "_cfg", None)
    if cfg is None:
        cfg = config.load(getattr(args, "config", None))
        args._cfg = cfg
        m = cfg.models
        for attr, value in (("model", m.embedder), ("detector", m.detector), ("threads", m.threads),
                            ("min_face", m.min_face_px), ("rescue", m.rescue), ("verifier", m.verifier or None),
                            ("fusion", m.fusion or None),
                            ("fpir", cfg.decision.fpir), ("store", Path(cfg.store.path) if cfg.store.path else None),
                            ("key_file", cfg.store.key_file or None)):
            if getattr(args, attr, None) is None:
                setattr(args, attr, value)
    return cfg


def registry(args: argparse.Namespace):
    from edge.models.registry import Registry

    cfg = settings(args)
    return Registry(Path(cfg.models.model_dir) if cfg.models.model_dir else None)


def head(args: argparse.Namespace):
    from edge.verifier import resolve_head

    if getattr(args, "_head", None) is None:
        args._head = resolve_head(args.verifier, registry(args))
    return args._head


def pipeline(args: argparse.Namespace):
    """The one recognition path with the configured models; with a verification head, every embedder it reads
    is computed too (and, at enrolment, stored)."""
    from edge.pipeline import FacePipeline

    settings(args)
    extra: tuple[str, ...] = ()
    if getattr(args, "verifier", None):
        extra = tuple(head(args).embedders)
    elif getattr(args, "fusion", None):
        extra = tuple(registry(args).manifest(args.fusion).extra.get("members", ()))
    return FacePipeline(registry(args), detector=args.detector, embedder=args.model, threads=args.threads,
                        min_face_px=args.min_face, extra_embedders=extra,
                        rescue=args.rescue)


def scorer(args: argparse.Namespace, store: Any = None):
    """The one scorer (edge/match) the configuration and options name."""
    from edge.match.factory import make_scorer

    settings(args)
    cfg = settings(args)
    templates = "max" if getattr(args, "verifier", None) else cfg.decision.templates
    return make_scorer(registry(args), args.model, getattr(args, "verifier", None) or "", store,
                       getattr(args, "fpir", None) or 0.01, getattr(args, "fusion", None) or "", templates)


def open_store(args: argparse.Namespace, create: bool = False):
    """The store the command names; only enrolment creates one (a read command on a mistyped path is an
    error, not a new empty store)."""
    from edge.paths import state_dir
    from edge.store.crypto import load_key
    from edge.store.db import Store

    settings(args)
    path = args.store or state_dir() / "facegate.db"
    return Store(path, key=load_key(args.key_file, store=path), keep_crops=getattr(args, "keep_crops", False),
                 create=create)


def probe(args: argparse.Namespace, pipe: Any, image_path: Path | None = None):
    """The chosen face of the image and its probe ({embedder: embedding} for every embedder the pipeline runs:
    the face is detected once, each embedder embeds it once)."""
    from edge.errors import FacegateError
    from edge.imageio import load_bgr

    path = image_path or args.image
    try:
        return pipe.probe(load_bgr(path), args.policy)
    except FacegateError as exc:
        msg = str(exc)
        raise FacegateError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"
