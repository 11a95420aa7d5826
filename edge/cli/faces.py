"""`facegate detect | embed | compare`: faces of one image, its embedding, two photos 1:1."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.common import NO, YES, emit, pipeline, probe, recognition_options, scorer


def cmd_detect(args: argparse.Namespace) -> int:
    from edge.imageio import load_bgr

    img = load_bgr(args.image)
    faces = pipeline(args).detect(img)
    data = {"image": str(args.image), "width": img.shape[1], "height": img.shape[0],
            "faces": [f.to_dict() for f in faces]}
    lines = [f"{len(faces)} face(s) in {args.image}"]
    lines += [f"  box {d['box']} score {d['score']}" for d in data["faces"]]
    emit(args, data, "\n".join(lines))
    return YES


def cmd_embed(args: argparse.Namespace) -> int:
    pipe = pipeline(args)
    face, vectors = probe(args, pipe)
    emb = vectors[pipe.manifest.name]
    data = {"image": str(args.image), "model": pipe.manifest.name, "face": face.to_dict(),
            "embedding": [round(float(v), 6) for v in emb]}
    emit(args, data, " ".join(f"{v:.6f}" for v in emb))
    return YES


def cmd_compare(args: argparse.Namespace) -> int:
    pipe = pipeline(args)
    s = scorer(args)
    a, b = (probe(args, pipe, path)[1] for path in (args.image1, args.image2))
    r = s.compare(a, b)
    data = {"score": round(r.score, 4), "threshold": r.threshold, "same_person": r.match, "model": r.model}
    verdict = "same person" if r.match else "different people"
    emit(args, data, f"{verdict} (score {r.score:.4f}, threshold {r.threshold:.4f})")
    return YES if r.match else NO


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="find faces in an image")
    p.add_argument("image", type=Path)
    recognition_options(p)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("embed", help="print the embedding of the chosen face in an image")
    p.add_argument("image", type=Path)
    recognition_options(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("compare", help="1:1 — are two photos the same person? (exit 0 yes, 1 no, 2 error)")
    p.add_argument("image1", type=Path)
    p.add_argument("image2", type=Path)
    recognition_options(p, verifier="score with a trained verification head")
    p.set_defaults(func=cmd_compare)
