"""`facegate enroll | enroll-dir | verify | identify`: putting people in the store and asking who someone is."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.common import (
    ERROR,
    NO,
    YES,
    bounded,
    emit,
    open_store,
    pipeline,
    probe,
    recognition_options,
    scorer,
    store_options,
)
from edge.errors import FacegateError


def _enroller(args: argparse.Namespace, store):
    from edge.enroll import Enroller

    return Enroller(store, pipeline(args), policy=args.policy, scorer=scorer(args, store))


def _report_judged(args: argparse.Namespace, name: str, judged) -> int:
    accepted = sum(j.accepted for j in judged)
    already = sum(j.already for j in judged)
    data = {"identity": name, "accepted": accepted, "already_enrolled": already,
            "refused": len(judged) - accepted - already, "images": [j.to_dict() for j in judged]}
    lines = [f"{name}: {accepted} of {len(judged)} image(s) enrolled"
             + (f", {already} already enrolled" if already else "")]
    lines += [f"  {'already enrolled' if j.already else 'refused'} {j.image}: {'; '.join(j.reasons)}"
              for j in judged if not j.accepted]
    emit(args, data, "\n".join(lines))
    return YES if accepted or already else ERROR


def cmd_enroll(args: argparse.Namespace) -> int:
    with open_store(args, create=not args.add) as store:
        if args.add and store.identity(args.name) is None:
            raise FacegateError(f"--add: no enrolled identity {args.name!r} (a typo would start a new person; "
                                "leave out --add to enrol someone new)")
        judged = _enroller(args, store).enroll(args.name, args.images, force=args.force,
                                               command=" ".join(["enroll", args.name, *map(str, args.images)]),
                                               display_name=args.display_name)
    return _report_judged(args, args.name, judged)


def cmd_enroll_dir(args: argparse.Namespace) -> int:
    from edge.enroll import enroll_dir

    with open_store(args, create=True) as store:
        summary = enroll_dir(_enroller(args, store), args.dir, force=args.force, limit=args.limit)
    text = (f"enrolled {summary['accepted']} of {summary['images']} images as {summary['identities']} identities "
            f"({summary['images_per_s']} images/s)")
    if summary["already_enrolled"]:
        text += f"; {summary['already_enrolled']} already enrolled"
    if summary["refusal_reasons"]:
        text += "\nrefusals: " + ", ".join(f"{k} ×{v}" for k, v in summary["refusal_reasons"].items())
    emit(args, summary, text)
    return YES if summary["accepted"] or summary["already_enrolled"] else ERROR


def cmd_verify(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        s = scorer(args, store)
        if store.identity(args.id) is None:
            raise FacegateError(f"unknown identity {args.id!r}")
        face, vectors = probe(args, pipeline(args))
        r = s.verify(vectors, args.id)
    data = {"identity": args.id, "score": round(r.score, 4), "threshold": r.threshold, "match": r.match,
            "face": face.to_dict(), "model": r.model}
    verdict = "match" if r.match else "no match"
    emit(args, data, f"{verdict}: {args.id} (score {r.score:.4f}, threshold {r.threshold:.4f})")
    return YES if r.match else NO


def cmd_identify(args: argparse.Namespace) -> int:
    from edge.match.thresholds import identify_threshold

    with open_store(args) as store:
        s = scorer(args, store)
        _, vectors = probe(args, pipeline(args))
        r = s.identify(vectors, top=args.top)
        k = max(1, s.identities())
        extrapolated = identify_threshold(s.manifest, k, args.fpir)[1]["extrapolated"]
        rows = s.gallery.rows if s.gallery is not None else 0
    result = {"identity": r.identity, "recognized": r.match, "model": r.model,
              "score": None if r.score is None else round(r.score, 4), "threshold": round(r.threshold, 4),
              "margin": None if r.margin is None else round(r.margin, 4), "gallery_identities": k,
              "gallery_templates": rows, "fpir_target": args.fpir, "threshold_extrapolated": extrapolated,
              "candidates": [{"identity": c.name, "score": round(c.score, 4)} for c in r.candidates]}
    if result["recognized"]:
        text = f"{result['identity']} (score {result['score']:.4f}, threshold {result['threshold']:.4f})"
    else:
        best = f"best score {result['score']:.4f}, " if result["score"] is not None else ""
        text = f"not recognized ({best}threshold {result['threshold']:.4f})"
    if args.top > 1:
        text += "".join(f"\n  {c['identity']}: {c['score']:.4f}" for c in result["candidates"])
    emit(args, result, text)
    return YES if result["recognized"] else NO


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enroll", help="enrol one person from one or more photos")
    p.add_argument("name")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--display-name")
    p.add_argument("--force", action="store_true",
                   help="enrol even if a photo matches another identity or does not match this one")
    p.add_argument("--keep-crops", action="store_true", help="keep face crops (for re-embedding later)")
    p.add_argument("--add", action="store_true",
                   help="add photos to an enrolled identity (refused if NAME is not enrolled; each photo must "
                        "match it at the 1:1 threshold unless --force)")
    store_options(p)
    recognition_options(p, policy="single", verifier="also store templates of every embedder this head reads")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("enroll-dir", help="enrol a folder with one sub-folder of photos per person")
    p.add_argument("dir", type=Path)
    p.add_argument("--force", action="store_true")
    p.add_argument("--keep-crops", action="store_true")
    p.add_argument("--limit", type=bounded(int, 1), help="enrol only the first N images (folder order)")
    store_options(p)
    recognition_options(p, policy="single", verifier="also store templates of every embedder this head reads")
    p.set_defaults(func=cmd_enroll_dir)

    p = sub.add_parser("verify", help="1:1 — is this photo the claimed identity? (exit 0 yes, 1 no, 2 error)")
    p.add_argument("--id", required=True, help="claimed identity")
    p.add_argument("image", type=Path)
    store_options(p)
    recognition_options(p, verifier="score with a trained verification head at its own 1:1 threshold")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("identify", help="1:N — who is this? (exit 0 recognised, 1 not recognized, 2 error)")
    p.add_argument("image", type=Path)
    p.add_argument("--top", type=bounded(int, 1, 1000), default=1, help="list this many candidates")
    p.add_argument("--fpir", type=bounded(float, 1e-6, 0.5),
                   help="target false-positive identification rate at the current gallery size "
                        "(default: decision.fpir, 0.01)")
    store_options(p)
    recognition_options(p, verifier="score with a trained verification head at its own 1:N threshold")
    p.set_defaults(func=cmd_identify)
