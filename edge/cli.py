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

import numpy as np

from edge import __version__
from edge.errors import FacegateError
from edge.vision.detect import POLICIES

TORCH_GROUPS = ("export", "train", "style")
# Command groups defined next to the code they drive: each module has add_commands(subparsers), and its
# handlers take the parsed arguments and return the exit code. Imported lazily so start-up stays cheap.
COMMAND_MODULES: tuple[str, ...] = ("edge.daemon_cli", "edge.stylize_cli", "edge.liveness_cli",
                                     "edge.explain_cli")


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)


def _pipeline(args: argparse.Namespace):
    from edge.pipeline import FacePipeline

    # With a verification head, every embedder it reads is computed too (and, at enrolment, stored).
    extra = _head(args).embedders if getattr(args, "verifier", None) else ()
    return FacePipeline(detector=args.detector, embedder=args.model, threads=args.threads,
                        min_face_px=args.min_face, extra_embedders=tuple(extra))


def _head(args: argparse.Namespace):
    from edge.verifier import resolve_head

    if getattr(args, "_head", None) is None:
        args._head = resolve_head(args.verifier)
    return args._head


def _verifier_opt(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--verifier", metavar="HEAD",
                   help=f"{what} (installed name or bundle folder; default: the embedder's cosine)")


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


def cmd_bench_identify(args: argparse.Namespace) -> int:
    from edge.bench import identify

    r = identify.run(args.images, _pipeline(args), gallery_size=args.gallery_size, seeds=args.seeds,
                     exclude_pairs=args.exclude_pairs, fpir=args.fpir, policy=args.policy, verifier=args.verifier)
    text = (f"K={r['gallery_size']}, {r['seeds']} seeds: rank-1 {r['rank1']:.4f}; DIR at FPIR "
            + ", ".join(f"{k}: {v:.4f}" for k, v in r["dir_at_fpir"].items())
            + f"; at the operating threshold {r['operating_threshold']:.4f}: FNIR {r['fnir']:.4f}, FPIR {r['fpir']:.4f}"
            f" ({r['probes']} known, {r['unknown_probes']} unknown probes)")
    _emit(args, r, text)
    return 0


def cmd_bench_search(args: argparse.Namespace) -> int:
    from edge.bench import search
    from edge.imageio import sample_images

    real = None
    if args.images:
        from edge.bench.lfw import embed_paths

        paths = sample_images(args.images, args.real)
        embs, _ = embed_paths(_pipeline(args), args.images, [str(p.relative_to(args.images)) for p in paths])
        real = np.stack(list(embs.values())) if embs else None
    result = search.run(args.n, args.dim, real, queries=args.queries, seed=args.seed)
    _emit(args, result, json.dumps(result))
    return 0


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from edge.bench import speed

    result = speed.run(args.images, limit=args.limit, model=args.model, policy=args.policy,
                       peers=not args.no_peers)
    text = json.dumps(result)
    _emit(args, result, text)
    return 0


def _store(args: argparse.Namespace):
    from edge.paths import state_dir
    from edge.store.crypto import load_key
    from edge.store.db import Store

    path = args.store or state_dir() / "facegate.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return Store(path, key=load_key(args.key_file, store=path), keep_crops=getattr(args, "keep_crops", False))


def _enroller(args: argparse.Namespace, store):
    from edge.enroll import Enroller

    return Enroller(store, _pipeline(args), policy=args.policy)


def _report_judged(args: argparse.Namespace, name: str, judged) -> int:
    accepted = sum(j.accepted for j in judged)
    data = {"identity": name, "accepted": accepted, "refused": len(judged) - accepted,
            "images": [j.to_dict() for j in judged]}
    lines = [f"{name}: {accepted} of {len(judged)} image(s) enrolled"]
    lines += [f"  refused {j.image}: {'; '.join(j.reasons)}" for j in judged if not j.accepted]
    _emit(args, data, "\n".join(lines))
    return 0 if accepted else 2


def cmd_enroll(args: argparse.Namespace) -> int:
    with _store(args) as store:
        judged = _enroller(args, store).enroll(args.name, args.images, force=args.force,
                                               command=" ".join(["enroll", args.name, *map(str, args.images)]),
                                               display_name=args.display_name)
    return _report_judged(args, args.name, judged)


def cmd_enroll_dir(args: argparse.Namespace) -> int:
    from edge.enroll import enroll_dir

    with _store(args) as store:
        summary = enroll_dir(_enroller(args, store), args.dir, force=args.force, limit=args.limit)
    text = (f"enrolled {summary['accepted']} of {summary['images']} images as {summary['identities']} identities "
            f"({summary['images_per_s']} images/s)")
    if summary["refusal_reasons"]:
        text += "\nrefusals: " + ", ".join(f"{k} ×{v}" for k, v in summary["refusal_reasons"].items())
    _emit(args, summary, text)
    return 0 if summary["accepted"] else 2


def _probe(args: argparse.Namespace, pipe):
    """The chosen face of the image and its probe: the embedding, or with --verifier {embedder: embedding} for
    every embedder the head reads (the face is detected once, each embedder embeds it once)."""
    from edge.imageio import load_bgr
    from edge.vision.detect import select_face

    image = load_bgr(args.image)
    face = select_face(pipe.detect(image), image.shape, args.policy)
    return face, (pipe.embed_all(image, face) if args.verifier else pipe.embed_faces(image, [face])[0])


def cmd_verify(args: argparse.Namespace) -> int:
    from edge.query import verify, verify_with_head

    pipe = _pipeline(args)
    with _store(args) as store:
        face, probe = _probe(args, pipe)
        if args.verifier:
            v = verify_with_head(store, _head(args), args.id, probe)
        else:
            v = verify(store, pipe, args.id, probe)
    data = {**v.to_dict(), "face": face.to_dict(), "model": (_head(args) if args.verifier else pipe).manifest.name}
    verdict = "match" if v.match else "no match"
    _emit(args, data, f"{verdict}: {args.id} (score {v.score:.4f}, threshold {v.threshold:.4f})")
    return 0 if v.match else 1


def cmd_identify(args: argparse.Namespace) -> int:
    from edge.query import head_matcher, identify
    from edge.store.matcher import Matcher

    pipe = _pipeline(args)
    with _store(args) as store:
        _, probe = _probe(args, pipe)
        if args.verifier:
            matcher, manifest = head_matcher(store, _head(args)), _head(args).manifest
        else:
            matcher, manifest = Matcher.follow(store, pipe.manifest.name), pipe.manifest
        result = identify(matcher, manifest, probe, top=args.top, fpir=args.fpir)
    if result["recognized"]:
        text = f"{result['identity']} (score {result['score']:.4f}, threshold {result['threshold']:.4f})"
    else:
        best = f"best score {result['score']:.4f}, " if result["score"] is not None else ""
        text = f"not recognized ({best}threshold {result['threshold']:.4f})"
    if args.top > 1:
        text += "".join(f"\n  {c['identity']}: {c['score']:.4f}" for c in result["candidates"])
    _emit(args, result, text)
    return 0 if result["recognized"] else 1


def cmd_store(args: argparse.Namespace) -> int:
    from edge.store.db import Store

    action = args.store_command
    if action == "restore":
        from edge.paths import state_dir
        from edge.store.crypto import load_key

        dest = args.store or state_dir() / "facegate.db"
        Store.restore(args.file, dest, key=load_key(args.key_file, store=dest))
        _emit(args, {"restored": str(dest), "from": str(args.file)}, f"restored {dest} from {args.file}")
        return 0
    with _store(args) as store:
        if action == "list":
            rows = [{"name": i.name, "display_name": i.display_name, "templates": i.templates, "crops": i.crops,
                     "created": i.created} for i in store.identities()]
            _emit(args, rows, "\n".join(f"{r['name']}: {r['templates']}" for r in rows) or "(empty)")
        elif action == "show":
            ident = store.identity(args.name)
            if ident is None:
                raise FacegateError(f"unknown identity {args.name!r}")
            audit = [a for a in store.audit() if a.get("name") == args.name]
            data = {"name": ident.name, "display_name": ident.display_name, "metadata": ident.metadata,
                    "templates": ident.templates, "crops": ident.crops, "created": ident.created, "audit": audit}
            _emit(args, data, json.dumps(data, indent=2, default=str))
        elif action == "delete":
            if not store.delete(args.name, command=f"store delete {args.name}"):
                raise FacegateError(f"unknown identity {args.name!r}")
            _emit(args, {"deleted": args.name}, f"deleted {args.name}")
        elif action == "backup":
            store.backup(args.file)
            _emit(args, {"backup": str(args.file)}, f"backed up to {args.file}")
        elif action == "audit":
            rows = store.audit(limit=args.limit)
            _emit(args, rows, "\n".join(f"{_iso(r['ts'])} {r['action']:<8} {r.get('name')}: {r['command']}"
                                        for r in rows))
        elif action == "reembed":
            from edge.reembed import reembed

            args.model = args.embedder
            summary = reembed(store, _pipeline(args), args.embedder)
            _emit(args, summary, f"re-embedded {summary['templates']} template(s) of {summary['identities']} "
                                 f"identities with {args.embedder}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.compare:
        from edge import demo

        return demo.run(as_json=args.json)
    from edge import demo_daemon

    return demo_daemon.run(as_json=args.json)


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

    def store_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", type=Path, help="SQLite store (default: <state dir>/facegate.db)")
        p.add_argument("--key-file", help="AES key file for encryption at rest (or $FACEGATE_STORE_KEY)")

    p = sub.add_parser("enroll", help="enrol one person from one or more photos")
    p.add_argument("name")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--display-name")
    p.add_argument("--force", action="store_true", help="enrol even if a photo matches another identity")
    p.add_argument("--keep-crops", action="store_true", help="keep face crops (for re-embedding later)")
    _verifier_opt(p, "also store templates of every embedder this head reads")
    store_opts(p)
    _common(p, policy="single")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("enroll-dir", help="enrol a folder with one sub-folder of photos per person")
    p.add_argument("dir", type=Path)
    p.add_argument("--force", action="store_true")
    p.add_argument("--keep-crops", action="store_true")
    p.add_argument("--limit", type=int, help="enrol only the first N images (folder order)")
    store_opts(p)
    _verifier_opt(p, "also store templates of every embedder this head reads")
    _common(p, policy="single")
    p.set_defaults(func=cmd_enroll_dir)

    p = sub.add_parser("verify", help="1:1 — is this photo the claimed identity? (exit 0 yes, 1 no, 2 error)")
    p.add_argument("--id", required=True, help="claimed identity")
    p.add_argument("image", type=Path)
    _verifier_opt(p, "score with a trained verification head at its own 1:1 threshold")
    store_opts(p)
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("identify", help="1:N — who is this? (exit 0 recognised, 1 not recognized, 2 error)")
    p.add_argument("image", type=Path)
    p.add_argument("--top", type=int, default=1, help="list this many candidates")
    p.add_argument("--fpir", type=float, default=0.01,
                   help="target false-positive identification rate at the current gallery size (default 0.01)")
    _verifier_opt(p, "score with a trained verification head at its own 1:N threshold")
    store_opts(p)
    _common(p)
    p.set_defaults(func=cmd_identify)

    st = sub.add_parser("store", help="list, show, delete, back up, restore, audit, re-embed").add_subparsers(
        dest="store_command", required=True, metavar="ACTION")
    for action, helptext in (("list", "list identities"), ("show", "one identity with its audit trail"),
                             ("delete", "delete an identity: templates, crops, gone from the disk files"),
                             ("backup", "consistent copy of the store"),
                             ("restore", "replace the store with a validated backup"),
                             ("audit", "the audit log"), ("reembed", "recompute templates from kept crops")):
        p = st.add_parser(action, help=helptext)
        if action in ("show", "delete"):
            p.add_argument("name")
        if action in ("backup", "restore"):
            p.add_argument("file", type=Path)
        if action == "audit":
            p.add_argument("--limit", type=int)
        if action == "reembed":
            p.add_argument("--embedder", required=True, help="embedder whose templates to (re)compute")
            _common(p)
        else:
            p.add_argument("--json", action="store_true")
        store_opts(p)
        p.set_defaults(func=cmd_store)

    p = sub.add_parser("demo", help="the daemon end to end on public-domain sample faces: no camera, no broker "
                                    "needed (needs [demo])")
    p.add_argument("--compare", action="store_true", help="only compare the sample faces (no daemon, no MQTT)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)

    models = sub.add_parser("models", help="list and verify model files").add_subparsers(
        dest="models_command", required=True, metavar="ACTION")
    p = models.add_parser("list", help="list known models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    from edge.models_cli import add_install_parser

    add_install_parser(models)
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
    p = bench.add_parser("identify", help="open-set 1:N identification (rank-1, DIR at FPIR, FNIR/FPIR)")
    p.add_argument("--images", type=Path, required=True, help="folder-per-person tree")
    p.add_argument("--gallery-size", type=int, default=100)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--fpir", type=float, default=0.01, help="target FPIR of the operating threshold")
    p.add_argument("--exclude-pairs", type=Path,
                   help="leave out the identities of this pairs file (default: the 1:N calibration file, "
                        "when found beside the images folder)")
    p.add_argument("--verifier", metavar="HEAD",
                   help="score with a trained verification head (installed name or bundle folder)")
    _common(p, policy="central")
    p.set_defaults(func=cmd_bench_identify)
    p = bench.add_parser("search", help="gallery search: the matcher against faiss, one thread")
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="gallery sizes")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--images", type=Path, help="real faces to embed for the gallery (padded with random vectors)")
    p.add_argument("--real", type=int, default=2000, help="how many real images to embed (default 2000)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    _common(p, policy="central")
    p.set_defaults(func=cmd_bench_search)
    p = bench.add_parser("speed", help="ms per image, decoded image → embedding, ours vs peers, one thread")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--limit", type=int, default=200, help="images to time (default: 200)")
    p.add_argument("--no-peers", action="store_true", help="time only our pipeline")
    _common(p, policy="central")
    p.set_defaults(func=cmd_bench_speed)
    from edge.daemon_cli import add_bench_daemon
    from edge.liveness_cli import add_bench_liveness

    add_bench_daemon(bench)
    add_bench_liveness(bench)

    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)

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

        return int(export_main(argv))
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("edge", "export"):
            raise  # our own bug, not a missing extra
        print(f"facegate: error: '{argv[0]}' needs the export extra ({exc.name} is missing): "
              "pip install 'facegate[export]'", file=sys.stderr)
        return 2
    except FacegateError as exc:
        print(f"facegate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
