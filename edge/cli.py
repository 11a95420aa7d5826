"""The `facegate` command line: parses arguments, calls the modules, prints text or JSON.

Exit codes: 0 success (compare: same person), 1 a negative answer (compare: different people), 2 an error
(bad input, missing model, no face), printed as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge import __version__
from edge.errors import FacegateError
from edge.vision.detect import POLICIES

TORCH_GROUPS = ("export", "train", "style")


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)


def _pipeline(args: argparse.Namespace):
    from edge.pipeline import FacePipeline

    return FacePipeline(detector=args.detector, embedder=args.model, threads=args.threads,
                        min_face_px=args.min_face)


def _common(p: argparse.ArgumentParser, policy: str = "largest") -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--model", default="sface", help="embedder model name (default: sface)")
    p.add_argument("--detector", default="yunet", help="detector model name (default: yunet)")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default: 1)")
    p.add_argument("--min-face", type=float, default=40.0, metavar="PX",
                   help="smallest face to find, in image pixels (default: 40)")
    p.add_argument("--policy", choices=POLICIES, default=policy,
                   help=f"which face to use when several are found (default: {policy}; single: refuse)")


# -- commands -----------------------------------------------------------------------------------------------
def cmd_detect(args: argparse.Namespace) -> int:
    from edge.imageio import load_bgr

    img = load_bgr(args.image)
    faces = _pipeline(args).detect(img)
    data = {"image": str(args.image), "width": img.shape[1], "height": img.shape[0],
            "faces": [f.to_dict() for f in faces]}
    lines = [f"{len(faces)} face(s) in {args.image}"]
    lines += [f"  box {d['box']} score {d['score']}" for d in data["faces"]]
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from edge.imageio import load_bgr

    pipe = _pipeline(args)
    face, emb = pipe.embed_one(load_bgr(args.image), policy=args.policy)
    data = {"image": str(args.image), "model": pipe.manifest.name, "face": face.to_dict(),
            "embedding": [round(float(v), 6) for v in emb]}
    _emit(args, data, " ".join(f"{v:.6f}" for v in emb))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from edge.imageio import load_bgr

    pipe = _pipeline(args)
    embs = []
    for path in (args.image1, args.image2):
        try:
            embs.append(pipe.embed_one(load_bgr(path), policy=args.policy)[1])
        except FacegateError as exc:
            msg = str(exc)
            raise FacegateError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    score = float(embs[0] @ embs[1])
    t = pipe.manifest.threshold("verify")
    same = score >= t.value
    data = {"score": round(score, 4), "threshold": t.value, "same_person": same, "model": pipe.manifest.name}
    verdict = "same person" if same else "different people"
    _emit(args, data, f"{verdict} (score {score:.4f}, threshold {t.value:.4f})")
    return 0 if same else 1


def cmd_models_list(args: argparse.Namespace) -> int:
    from edge.models.registry import Registry

    reg = Registry()
    rows = []
    for name in reg.names():
        m = reg.manifest(name)
        rows.append({"name": m.name, "task": m.task, "file": m.file, "sha256": m.sha256, "runtime": m.runtime,
                     "licence": m.licence, "source": m.source,
                     "thresholds": {k: v.value for k, v in m.thresholds.items()}})
    text = "\n".join(f"{r['name']:<12} {r['task']:<9} {r['runtime']:<12} {r['file']}" for r in rows)
    _emit(args, rows, text)
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from edge.models.registry import Registry

    reg = Registry()
    names = args.names or reg.names()
    rows, failed = [], False
    for name in names:
        try:
            m = reg.manifest(name)
            path = reg.runtime_file(m)  # checks the source hash and (re)builds a prepared copy if stale
            rows.append({"name": name, "ok": True, "file": str(reg.source_path(m)), "runtime_file": str(path)})
        except FacegateError as exc:
            failed = True
            rows.append({"name": name, "ok": False, "error": str(exc)})
    text = "\n".join(f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']}: {r.get('runtime_file') or r['error']}"
                     for r in rows)
    _emit(args, rows, text)
    return 2 if failed else 0


def cmd_bench_pairs(args: argparse.Namespace) -> int:
    from edge.bench import pairs

    result = pairs.run(args.images, args.pairs, _pipeline(args), policy=args.policy, plot=args.plot)
    text = (f"{result['model']}: accuracy {result['accuracy']:.4f} ± {result['accuracy_sem']:.4f} (sem), "
            f"std {result['accuracy_std']:.4f} over {result['folds']} folds; TAR@FAR "
            + ", ".join(f"{k}: {v:.4f}" for k, v in result["tar_at_far"].items())
            + f" ({result['impostor_pairs']} impostor pairs); no face: {result['no_face']}")
    _emit(args, result, text)
    return 0


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from edge.bench import speed

    result = speed.run(args.images, limit=args.limit, model=args.model, policy=args.policy,
                       peers=not args.no_peers)
    text = json.dumps(result)
    _emit(args, result, text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge import demo

    return demo.run(as_json=args.json)


# -- parser -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegate", description="Offline face access control for the edge.")
    parser.add_argument("--version", action="version", version=f"facegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("detect", help="find faces in an image")
    p.add_argument("image", type=Path)
    _common(p)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("embed", help="print the embedding of the chosen face in an image")
    p.add_argument("image", type=Path)
    _common(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("compare", help="1:1 — are two photos the same person? (exit 0 yes, 1 no, 2 error)")
    p.add_argument("image1", type=Path)
    p.add_argument("image2", type=Path)
    _common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="recognise public-domain sample faces end to end (needs [demo])")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)

    models = sub.add_parser("models", help="list and verify model files").add_subparsers(
        dest="models_command", required=True, metavar="ACTION")
    p = models.add_parser("list", help="list known models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("verify", help="check every model file's sha256 and prepare it if needed")
    p.add_argument("names", nargs="*")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_verify)

    bench = sub.add_parser("bench", help="accuracy and speed benchmarks (JSON with --json)").add_subparsers(
        dest="bench_command", required=True, metavar="BENCH")
    p = bench.add_parser("pairs", help="LFW-protocol verification accuracy")
    p.add_argument("--images", type=Path, required=True, help="folder-per-person tree (Name/Name_NNNN.jpg)")
    p.add_argument("--pairs", type=Path, required=True, help="LFW-format pairs file")
    p.add_argument("--plot", type=Path, help="write a ROC curve PNG here")
    _common(p, policy="central")
    p.set_defaults(func=cmd_bench_pairs)
    p = bench.add_parser("speed", help="ms per image, decoded image → embedding, ours vs peers, one thread")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--limit", type=int, default=200, help="images to time (default: 200)")
    p.add_argument("--no-peers", action="store_true", help="time only our pipeline")
    _common(p, policy="central")
    p.set_defaults(func=cmd_bench_speed)

    for group in TORCH_GROUPS:
        sub.add_parser(group, help=f"{group} commands (need the [export] extra)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TORCH_GROUPS:
        return _torch_group(argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FacegateError as exc:
        print(f"facegate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _torch_group(argv: list[str]) -> int:
    """Hand the export/train/style groups to export/, the only place edge/ imports it."""
    try:
        from export.cli import main as export_main
    except ImportError as exc:
        print(f"facegate: error: '{argv[0]}' needs the export extra ({exc.name} is missing): "
              "pip install 'facegate[export]'", file=sys.stderr)
        return 2
    try:
        return int(export_main(argv))
    except FacegateError as exc:
        print(f"facegate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
