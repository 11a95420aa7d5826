"""`facegate bench pairs | identify | search | speed | daemon | liveness`: accuracy and cost, printed as text or
--json. Benchmarks compare against the peer on the same input in the same run; their evaluation logic lives in
edge/eval/ and edge/bench/."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.common import (
    YES,
    bounded,
    config_option,
    emit,
    json_option,
    pct,
    pipeline,
    recognition_options,
    registry,
    scorer,
    settings,
)
from edge.errors import FacegateError


def cmd_pairs(args: argparse.Namespace) -> int:
    from edge.eval import pairs

    result = pairs.run(args.images, args.pairs, pipeline(args), policy=args.policy, plot=args.plot,
                       scorer=scorer(args))
    text = (f"{result['model']}: accuracy {result['accuracy']:.4f} ± {result['accuracy_sem']:.4f} (sem), "
            f"std {result['accuracy_std']:.4f} over {result['folds']} folds; TAR@FAR "
            + ", ".join(f"{k}: {v:.4f}" for k, v in result["tar_at_far"].items())
            + f" ({result['impostor_pairs']} impostor pairs); no face: {result['no_face']}")
    emit(args, result, text)
    return YES


def cmd_identify(args: argparse.Namespace) -> int:
    from edge.eval import identify

    r = identify.run(args.images, pipeline(args), gallery_size=args.gallery_size, seeds=args.seeds,
                     exclude_pairs=args.exclude_pairs, fpir=args.fpir, policy=args.policy, verifier=args.verifier,
                     scorer=scorer(args))
    text = (f"K={r['gallery_size']}, {r['seeds']} seeds: rank-1 {r['rank1']:.4f}; DIR at FPIR "
            + ", ".join(f"{k}: {v:.4f}" for k, v in r["dir_at_fpir"].items())
            + f"; at the operating threshold {r['operating_threshold']:.4f}: FNIR {r['fnir']:.4f}, "
            f"FPIR {r['fpir']:.4f} ({r['probes']} known, {r['unknown_probes']} unknown probes)")
    emit(args, r, text)
    return YES


def cmd_door(args: argparse.Namespace) -> int:
    from edge.eval import door
    from edge.match.factory import make_scorer

    reg = registry(args)
    specs = [s.strip() for s in args.scorers.split(",") if s.strip()]
    scorers = {}
    for spec in specs:  # "sface", "dlib-resnet", or "fusion:NAME" / "head:NAME"
        kind, _, name = spec.partition(":")
        if kind == "fusion":
            scorers[spec] = make_scorer(reg, args.model, fusion=name, fpir=args.fpir)
        elif kind == "head":
            scorers[spec] = make_scorer(reg, args.model, verifier=name, fpir=args.fpir)
        else:
            scorers[spec] = make_scorer(reg, spec, fpir=args.fpir)
    members = list(dict.fromkeys(e for s in scorers.values() for e in s.embedders))
    from edge.pipeline import FacePipeline

    pipe = FacePipeline(reg, detector=args.detector, embedder=members[0], extra_embedders=members[1:],
                        threads=args.threads, min_face_px=args.min_face)
    r = door.run(args.images, pipe, scorers, gallery_sizes=args.gallery_size, enrol=args.enrol,
                 probes_per_track=args.frames, seeds=args.seeds, exclude_pairs=args.exclude_pairs or (),
                 only_pairs=args.only_pairs, policy=args.policy,
                 templates=args.templates or settings(args).decision.templates)
    lines = [f"{c['scorer']:<22} K={c['gallery_size']:<5} e={c['enrol_photos']} m={c['track_frames']}: "
             + (c["skipped"] if "skipped" in c else
                f"rank-1 {c['rank1']:.4f}, DIR@FPIR 1% {c['dir_at_fpir']['0.01']:.4f}, 0.1% "
                f"{c['dir_at_fpir']['0.001']:.4f}; at {c['operating_threshold']:.3f}: FNIR {c['fnir']:.4f} FPIR "
                f"{c['fpir']:.4f} ({c['known_tracks']} known, {c['unknown_tracks']} unknown tracks)")
             for c in r["cells"]]
    lines.append("ms per face: " + ", ".join(f"{k} {v}" for k, v in r["ms_per_face"].items()))
    emit(args, r, "\n".join(lines))
    return YES


def cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from edge.bench import search
    from edge.imageio import sample_images

    real = None
    if args.images:
        from edge.eval.lfw import embed_paths

        paths = sample_images(args.images, args.real)
        embs, _ = embed_paths(pipeline(args), args.images, [str(p.relative_to(args.images)) for p in paths])
        real = np.stack(list(embs.values())) if embs else None
    result = search.run(args.n, args.dim, real, queries=args.queries, seed=args.seed)
    lines = [f"{r['n']} rows: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "n" and not isinstance(v, dict))
             for r in result["results"]]
    emit(args, result, "\n".join(lines))
    return YES


def cmd_speed(args: argparse.Namespace) -> int:
    from edge.bench import speed
    from edge.bench.frames import parse_size

    settings(args)
    fusion = tuple(m.strip() for m in (args.fusion_embedders or "").split(",") if m.strip())
    result = speed.run(args.images, limit=args.limit, model=args.model or None, policy=args.policy,
                       peers=not args.no_peers, registry=registry(args), fusion=fusion, min_face_px=args.min_face,
                       frames=parse_size(args.frames) if args.frames else None, rescue=args.rescue,
                       threads=args.threads or 1)
    ratios = ", ".join(f"{k} {v}×" for k, v in result.get("ratios", {}).items() if v is not None)
    stages = result["stages_ms"]
    embed = ", ".join(f"embed {k} {v}" for k, v in stages["embed"].items())
    emit(args, result, f"ours {result['ours_ms']} ms per image ({result['images']} {result['workload']['kind']}, "
                       f"one thread): decode {stages['decode']}, detect {stages['detect']}, {embed}"
                       + (f", liveness {stages['liveness']}" if stages["liveness"] is not None else "")
                       + (f"; fused {result['ours_fused_ms']}" if "ours_fused_ms" in result else "")
                       + (f"; {ratios} faster than the peers" if ratios else "")
                       + _rescue_line(result["rescue"]["empty_frames"]))
    return YES


def _rescue_line(rc: dict) -> str:
    if not rc.get("frames"):
        return ""
    return (f"; an empty {rc['frame_size'][0]}x{rc['frame_size'][1]} frame: detect {rc['first_pass_ms']} ms, "
            f"{rc['with_rescue_ms']} ms with the rescue pass")


def cmd_daemon(args: argparse.Namespace) -> int:
    from edge.bench import daemon as bench

    result = bench.run(args.source, fps=args.fps, frames_per_image=args.frames_per_image, limit=args.limit,
                       broker=args.broker, config_path=args.config)
    emit(args, result, f"{result['decisions']} decisions over {result['frames']} frames: p50 {result['p50_ms']} ms, "
                       f"p99 {result['p99_ms']} ms, {result['fps']} fps, {result['frames_dropped']} frames dropped, "
                       f"RSS peak {result['rss_peak_mb']} MB, liveness {result['liveness']}")
    return YES


def cmd_fleet(args: argparse.Namespace) -> int:
    from edge.bench import fleet as bench

    r = bench.run(doors=args.doors, gallery=args.gallery, sites=args.sites, changes=args.changes,
                  offline_changes=args.offline_changes, keep=args.keep, progress=not args.json)
    u, v, c = r["upsert"], r["revoke"], r["catch_up"]
    emit(args, r, f"{r['doors']} doors, {r['gallery']} identities, {r['sites']} sites ({r['brokers']} brokers): "
                  f"upsert p50 {u['p50_ms']} ms p99 {u['p99_ms']} ms; revoke p50 {v['p50_ms']} ms p99 {v['p99_ms']} "
                  f"ms; catch-up after {c['changes']} changes {c['from_process_start_s']} s from start "
                  f"({c['via']}); hashes equal: {r['hashes_equal']}")
    return YES if r["hashes_equal"] and c["converged"] else 1


def cmd_liveness(args: argparse.Namespace) -> int:
    from edge.bench import liveness as bench

    if args.clips:
        if args.live is None and args.spoof is None:
            raise FacegateError("bench liveness --clips: give --live DIR and/or --spoof DIR")
        r = bench.run_clips(args.live, args.spoof, model=args.model, threads=args.threads, fps=args.fps,
                            challenge=not args.no_challenge, direction=args.direction, k=args.k, n=args.n)
        lines = [f"{label} {c['clip']}: {c['verdict']} ({c['reason']})"
                 for label in ("live", "spoof") for c in r["clips"][label]]
        lines.append(f"clips: APCER {pct(r['apcer'])}, BPCER {pct(r['bpcer'])}, ACER {pct(r['acer'])}; "
                     f"no face: {r['no_face']}; tracking {r['tracking_ms_median']} ms/frame (median)")
    else:
        if args.live is None or args.spoof is None:
            raise FacegateError("bench liveness: give --live DIR and --spoof DIR")
        r = bench.run(args.live, args.spoof, model=args.model, threads=args.threads, limit=args.limit,
                      pairs=args.pairs)
        up = r["upstream_argmax"]
        lines = [f"{r['model']} ({' + '.join(r['members'])}), live iff score > {r['threshold']:g}: "
                 f"APCER {pct(r['apcer'])} ({r['attacks_accepted']} of {r['spoof_images'] - r['no_face']['spoof']}), "
                 f"BPCER {pct(r['bpcer'])} ({r['bona_fide_refused']} of "
                 f"{r['live_images'] - r['no_face']['live']}), ACER {pct(r['acer'])}",
                 f"no face: {r['no_face']['live']} live, {r['no_face']['spoof']} spoof; crops shrunk "
                 f"{pct(r['crops_adjusted']['shrunk'])}, shifted {pct(r['crops_adjusted']['shifted'])} "
                 f"(shrunk to fit, then shifted inside: no padding); high-confidence spoof on live faces "
                 f"{pct(r['certain_spoof_on_live'])}",
                 f"upstream arg-max rule for comparison: APCER {pct(up['apcer'])}, BPCER {pct(up['bpcer'])}"]
    emit(args, r, "\n".join(lines))
    return YES


def cmd_planar(args: argparse.Namespace) -> int:
    import sys

    from edge.bench import planar
    from edge.imageio import sample_images

    paths = [*sample_images(args.images, limit=args.limit), *args.image]
    r = planar.run(paths, seed=args.seed, progress=sys.stderr.isatty())
    lines = [f"OpenCV {r['opencv']}, {r['faces']} faces, seed {r['seed']}; planar iff ≥ {r['planar_share']:.0%} of "
             f"the points on one homography (points kept at conditioning ≥ {r['min_condition']:g})"]
    for kind, k in r["kinds"].items():
        lines.append(f"{kind}: {k['correct']} of {k['clips']} judged {k['expected']} ({k['no_verdict']} no verdict); "
                     f"some frame said the opposite in {k['some_frame_opposite']}; inliers of the deciding fit min "
                     f"{k['inliers_min']:.3f}, median {k['inliers_median']:.3f}"
                     + (f"; wrong: {', '.join(Path(w).name for w in k['wrong'])}" if k["wrong"] else ""))
    emit(args, r, "\n".join(lines))
    return YES


def cmd_web(args: argparse.Namespace) -> int:
    try:
        from edge.bench import web
    except ModuleNotFoundError as exc:
        raise FacegateError(f"bench web needs the web extra: pip install 'facegate[web]' ({exc.name} is missing)") \
            from None
    try:
        r = web.run(args.people, args.decisions, args.repeat, args.seed, settings(args))
    except ModuleNotFoundError as exc:
        raise FacegateError(f"bench web needs the web extra: pip install 'facegate[web]' ({exc.name} is missing)") \
            from None
    lines = [f"{r['people']} people, {r['decisions']} decisions logged; server time per request over {r['repeat']} "
             "requests (median / p95 / max), round trip median:"]
    lines += [f"  {label:<20} {p['server_ms_median']:7.2f} / {p['server_ms_p95']:7.2f} / {p['server_ms_max']:7.2f} ms"
              f"   {p['round_trip_ms_median']:7.2f} ms   {p['path']}" for label, p in r["pages"].items()]
    lines.append(f"worst {r['server_ms_max_overall']:.2f} ms: {'within' if r['within_target'] else 'over'} the "
                 f"{r['target_ms']:.0f} ms target")
    emit(args, r, "\n".join(lines))
    return YES


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="accuracy and speed benchmarks (JSON with --json)").add_subparsers(
        dest="bench_command", required=True, metavar="BENCH")
    p = bench.add_parser("pairs", help="LFW-protocol verification accuracy")
    p.add_argument("--images", type=Path, required=True, help="folder-per-person tree (Name/Name_NNNN.jpg)")
    p.add_argument("--pairs", type=Path, required=True, help="LFW-format pairs file")
    p.add_argument("--plot", type=Path, help="write a ROC curve PNG here")
    recognition_options(p, policy="best", verifier="score pairs with a trained verification head")
    p.set_defaults(func=cmd_pairs)

    p = bench.add_parser("identify", help="open-set 1:N identification (rank-1, DIR at FPIR, FNIR/FPIR)")
    p.add_argument("--images", type=Path, required=True, help="folder-per-person tree")
    p.add_argument("--gallery-size", type=bounded(int, 1), default=100)
    p.add_argument("--seeds", type=bounded(int, 1), default=10)
    p.add_argument("--fpir", type=bounded(float, 1e-6, 0.5), default=0.01,
                   help="target FPIR of the operating threshold")
    p.add_argument("--exclude-pairs", type=Path,
                   help="leave out the identities of this pairs file (default: the 1:N calibration file, "
                        "when found beside the images folder)")
    recognition_options(p, policy="best", verifier="score with a trained verification head")
    p.set_defaults(func=cmd_identify)

    p = bench.add_parser("door", help="walk-up benchmark: galleries of K with e photos each, tracks of m frames, "
                                      "known and unknown (DIR at FPIR, FNIR/FPIR per cell and scorer)")
    p.add_argument("--images", type=Path, required=True, help="folder-per-person tree (LFW)")
    p.add_argument("--scorers", default="sface,fusion:fused",
                   help="comma-separated: an embedder name, fusion:NAME or head:NAME (default: sface,fusion:fused)")
    p.add_argument("--gallery-size", type=bounded(int, 1), nargs="+", default=[100], metavar="K")
    p.add_argument("--enrol", type=bounded(int, 1, 10), nargs="+", default=[1, 3], metavar="E",
                   help="enrolment photos per identity (default: 1 3)")
    p.add_argument("--frames", type=bounded(int, 1, 20), nargs="+", default=[1, 3, 5], metavar="M",
                   help="distinct photos per probe track (default: 1 3 5)")
    p.add_argument("--seeds", type=bounded(int, 1), default=10)
    p.add_argument("--fpir", type=bounded(float, 1e-6, 0.5), default=0.01,
                   help="target FPIR of each scorer's operating threshold")
    p.add_argument("--exclude-pairs", type=Path, action="append", metavar="FILE",
                   help="also leave out the identities of this pairs file (those a scorer was calibrated on "
                        "always are)")
    p.add_argument("--templates", choices=("max", "mean"),
                   help="an identity's score over its enrolment photos: the best, or the mean (default: "
                        "decision.templates)")
    p.add_argument("--only-pairs", type=Path, metavar="FILE",
                   help="draw only from the identities of this pairs file (a development run, e.g. View 1)")
    recognition_options(p, policy="best")
    p.set_defaults(func=cmd_door)

    p = bench.add_parser("search", help="gallery search: the matcher against faiss, one thread")
    p.add_argument("--n", type=bounded(int, 1), nargs="+", default=[10_000, 100_000, 1_000_000],
                   help="gallery sizes")
    p.add_argument("--dim", type=bounded(int, 1), default=128)
    p.add_argument("--images", type=Path, help="real faces to embed for the gallery (padded with random vectors)")
    p.add_argument("--real", type=bounded(int, 1), default=2000, help="how many real images to embed (default 2000)")
    p.add_argument("--queries", type=bounded(int, 1), default=1000)
    p.add_argument("--seed", type=int, default=0)
    recognition_options(p, policy="best")
    p.set_defaults(func=cmd_search)

    p = bench.add_parser("speed", help="ms per image by stage (decode, detect, align, embed per model, liveness), "
                         "ours vs two peers in the same run, one thread")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--limit", type=bounded(int, 1), default=200, help="images to time (default: 200)")
    p.add_argument("--no-peers", action="store_true", help="time only our pipeline")
    p.add_argument("--frames", metavar="WxH", help="synthetic door frames of this size (e.g. 640x480, 1280x720), "
                   "one LFW portrait each at a door camera's face size, instead of the LFW photos")
    p.add_argument("--fusion-embedders", metavar="MODELS", help="comma-separated embedders run on every face "
                   "besides --model (e.g. dlib-resnet-int8): the fused setting's cost, ours_fused_ms and ratios")
    recognition_options(p, policy="best")
    p.set_defaults(func=cmd_speed)

    p = bench.add_parser("daemon", help="decision latency (capture → MQTT subscriber), fps, drops, RSS")
    p.add_argument("--source", type=Path, required=True,
                   help="image folder (recursive; a folder per person enrols each person's first image)")
    p.add_argument("--fps", type=bounded(float, 0.1, 240), default=15.0)
    p.add_argument("--frames-per-image", type=bounded(int, 1), default=8,
                   help="frames each image is shown for (default 8)")
    p.add_argument("--limit", type=bounded(int, 1), default=300, help="images to show (default 300)")
    p.add_argument("--broker", help="HOST:PORT of a broker (default: start a private one on loopback)")
    p.add_argument("--config", type=Path, help="base configuration (source, store, mqtt are set by the bench)")
    json_option(p)
    p.set_defaults(func=cmd_daemon)

    p = bench.add_parser("liveness", help="APCER/BPCER/ACER of the passive check at its fixed threshold; "
                                          "--clips: clips through the temporal rule and the challenge")
    p.add_argument("--live", type=Path, help="folder of bona fide images (or, with --clips, of clips)")
    p.add_argument("--spoof", type=Path, help="folder of attack images (or, with --clips, of clips)")
    p.add_argument("--pairs", type=Path, help="use only the --live images an LFW pairs file names (e.g. View 2)")
    p.add_argument("--limit", type=bounded(int, 1), help="at most this many images per folder (evenly spread)")
    p.add_argument("--clips", action="store_true",
                   help="each sub-folder of frames or video file is one presentation, run through tracking, "
                        "the temporal rule and the challenge")
    p.add_argument("--fps", type=bounded(float, 0.1, 240), default=15.0,
                   help="clips: frame rate of frame folders (default: 15)")
    p.add_argument("--no-challenge", action="store_true", help="clips: passive check and temporal rule only")
    p.add_argument("--direction", choices=("any", "left", "right"), default="any",
                   help="clips: the turn that passes the challenge (default: any; a recording cannot follow "
                        "a random instruction)")
    p.add_argument("--k", type=bounded(int, 1), default=3, help="clips: k of the last n frames must read live")
    p.add_argument("--n", type=bounded(int, 1), default=5, help="clips: n (default 5)")
    liveness_model_options(p)
    p.set_defaults(func=cmd_liveness)
    _planar_parser(bench)
    _fleet_parser(bench)


def _fleet_parser(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("fleet", help="gallery sync: a hub and N door processes over bridged mosquitto brokers; "
                                       "upsert / revoke latency to all doors, catch-up, hashes (deploy/FLEET.md)")
    p.add_argument("--doors", type=bounded(int, 1, 200), default=20)
    p.add_argument("--gallery", type=bounded(int, 1, 1000000), default=10000, help="identities in the hub's store")
    p.add_argument("--sites", type=bounded(int, 1, 8), default=2, help="site brokers bridged to the hub's")
    p.add_argument("--changes", type=bounded(int, 1, 10000), default=20, help="upserts, then revocations, measured")
    p.add_argument("--offline-changes", type=bounded(int, 1, 100000), default=1000,
                   help="changes made while one door is down")
    p.add_argument("--keep", type=Path, help="run in this folder and keep it (configurations, logs, stores)")
    json_option(p)
    p.set_defaults(func=cmd_fleet)

    p = bench.add_parser("web", help="the admin page's people page on a large store: server time per request "
                                     "(needs [web])")
    p.add_argument("--people", type=bounded(int, 1, 10_000_000), default=10_000,
                   help="identities in the scratch store (default 10000)")
    p.add_argument("--decisions", type=bounded(int, 0, 10_000_000), default=10_000,
                   help="decisions in the scratch decision log (default 10000)")
    p.add_argument("--repeat", type=bounded(int, 1, 10_000), default=20, help="requests per page (default 20)")
    p.add_argument("--seed", type=int, default=0)
    config_option(p)
    json_option(p)
    p.set_defaults(func=cmd_web)


def _planar_parser(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("planar", help="the planar-motion check on synthetic replays, torn prints and turning "
                                        "reliefs of the faces in a folder (a regression aid)")
    p.add_argument("--images", type=Path, required=True, help="folder of face images (searched recursively)")
    p.add_argument("--image", type=Path, action="append", default=[], metavar="FILE",
                   help="one more face image (repeatable), e.g. $FACEGATE_DATA/liveness/image_T1.jpg")
    p.add_argument("--limit", type=bounded(int, 1), default=20,
                   help="at most this many images from --images, evenly spread (default: 20)")
    p.add_argument("--seed", type=int, default=20,
                   help="first seed; kind i of face k uses seed + 25 i + k (default: 20)")
    json_option(p)
    p.set_defaults(func=cmd_planar)


def liveness_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="auto",
                   help="liveness bundle: auto (the fused MiniFASNets when installed), or a bundle name")
    p.add_argument("--threads", type=bounded(int, 1, 64), default=1, help="inference threads (default: 1)")
    json_option(p)
