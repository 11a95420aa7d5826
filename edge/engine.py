"""One frame → decisions: the pipeline finds, aligns, judges and embeds faces; the tracker follows them; the
liveness gate checks them; the scorer says who each one is; the policy decides.

    frame ─► FacePipeline.analyse (detect, align, quality, primary embedding, batched)
          ─► Tracker (a face → a track; a changed embedding splits the track)
          ─► LivenessGate (per track: passive check, temporal rule, challenge)
          ─► FacePipeline.embed (the scorer's other embedders, only for faces still to decide, batched)
          ─► Scorer.identify / Scorer.claim (edge/match)
          ─► Policy (k of n, windows, tailgating, fail-secure)

Before each frame the gallery follows the store (edge/match/gallery.py): a deletion made by another process
takes effect before the next decision, and a deleted identity leaves every track, claim and cooldown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.config import Config
from edge.decide import GATE_PASSED, Decision, Observation, Policy
from edge.enroll import face_crop_png
from edge.health import Metrics
from edge.liveness import LivenessCheck
from edge.liveness.temporal import LivenessGate
from edge.match import Scorer, accept
from edge.match.track import TrackProbe, frame_quality
from edge.pipeline import FacePipeline, FaceRecord
from edge.ratelimit import LogLimiter
from edge.sources import Frame
from edge.vision.detect import Face
from edge.vision.track import Tracker

log = logging.getLogger("facegate.engine")
# Faces refused by the quality gate, at debug level: at most one line per reason every 10 s (a face held at the
# wrong angle would otherwise log every frame).
gate_log = LogLimiter(log)


class Engine:
    """Runs the recognition stages on a frame and feeds the decision policy; times every stage."""

    STAGES = ("detect", "quality", "liveness", "embed", "match", "decide", "frame")

    def __init__(self, pipeline: FacePipeline, scorer: Scorer, policy: Policy, cfg: Config, metrics: Metrics,
                 liveness: LivenessCheck | None = None, live_gate: LivenessGate | None = None) -> None:
        if scorer.gallery is None:
            raise ValueError("the engine's scorer needs a gallery")
        self.pipeline, self.scorer, self.policy, self.cfg, self.metrics = pipeline, scorer, policy, cfg, metrics
        self.gallery = scorer.gallery
        self.store = self.gallery.store
        self.liveness = liveness
        # Liveness per track (edge/liveness/temporal.py): the check, the temporal rule and, when configured, the
        # challenge; without one given, a gate around the bare check.
        self.live_gate = live_gate if live_gate is not None else (
            LivenessGate(liveness, cfg.decision.k, cfg.decision.n) if liveness is not None else None)
        self.primary = pipeline.embedder.manifest.name
        self.gate = cfg.quality.gate()
        self.tracker = Tracker(cfg.decision.iou, cfg.decision.track_ttl_s)
        # The primary embedder's 1:1 threshold also tells one person from the next within a track.
        self.split_threshold = pipeline.embedder.manifest.threshold("verify").value
        self.face_present = False
        # Why no face in view could be used on the last frame (a quality-gate reason code, edge/vision/quality.py),
        # or None when one passed or none is in view: the daemon tells the person what to do about it.
        self.blocking_reason: str | None = None
        self.lock = threading.Lock()  # inference and tracking: the loop and enrolment commands share the models
        self.on_forget: Callable[[str], None] | None = None  # the daemon erases the name from its outbox too
        # Which decisions keep the deciding frame's face crop (the daemon: "unknown" ones, when the admin page's
        # decision log keeps them); taken by the daemon with take_crop as it announces the decision.
        self.keep_crop: Callable[[Decision], bool] | None = None
        self._crops: dict[int, bytes] = {}
        self._pseudonyms: dict[str, str] = {}
        self.hist = {s: metrics.histogram("stage_latency_ms", stage=s) for s in self.STAGES}
        self.gallery.on_forget.append(self.forget)

    # -- gallery ----------------------------------------------------------------------------------------------
    @property
    def identities(self) -> int:
        return self.scorer.identities()

    def reload(self) -> int:
        """Reload the gallery from the store (SIGHUP, `cmd/reload`)."""
        with self.lock:
            return self.gallery.load()

    def forget(self, name: str) -> None:
        """`name` was deleted: out of every track's pending observations, the claim, the cooldowns and the
        log-name cache, and (through on_forget) out of the outbox."""
        for track in self.tracker.tracks.values():
            window = track.state.get("window")
            if window and any(name in (o.identity, o.candidate) for o in window):
                for key in ("window", "decided", "eligible_at", "observations", "probe"):
                    track.state.pop(key, None)
        self.policy.forget(name)
        self._pseudonyms.pop(name, None)
        if self.on_forget is not None:
            self.on_forget(name)

    def log_name(self, name: str | None) -> str | None:
        """What a log line may say about an identity: its random pseudonym, never its name (a log line naming
        the person would outlive their deletion). The name itself only at debug level, by the caller."""
        if name is None:
            return None
        if name not in self._pseudonyms:
            self._pseudonyms[name] = f"#{self.store.pseudonym(name) or 'deleted'}"
        return self._pseudonyms[name]

    def claim(self, name: str) -> bool:
        """Narrow the next decision to `name` (Scorer.claim); False (ignored) when it has no templates."""
        if self.gallery.templates(name, self.scorer.embedders[0]) is None:
            log.warning("claim ignored: no such enrolled identity")
            log.debug("claim for %r ignored", name)
            return False
        with self.lock:
            self.policy.claim(name, list(self.tracker.tracks.values()))
        log.info("claim: the next decision is narrowed to identity %s", self.log_name(name))
        return True

    # -- the frame ----------------------------------------------------------------------------------------------
    def _timed(self, stage: str, t0: float) -> float:
        t = time.perf_counter()
        self.hist[stage].observe((t - t0) * 1e3)
        return t

    def process(self, frame: Frame, problems: list[str]) -> list[Decision]:
        with self.lock:
            return self._process(frame, problems)

    def _process(self, frame: Frame, problems: list[str]) -> list[Decision]:
        start = t = time.perf_counter()
        self.gallery.follow()  # before anything is decided on this frame
        faces = self.pipeline.detect(frame.image, frame=True)
        t = self._timed("detect", t)
        records = self.pipeline.analyse(frame.image, self.gate, embedders=[], faces=faces)  # align + quality
        t = self._timed("quality", t)
        self.blocking_reason = self._gate_report(records)
        assigned, _ = self.tracker.update(faces, frame.t_capture)  # in face order: assigned[i] is records[i]
        # Every face that passed gets the primary embedding (it also tells one person from the next within a
        # track). The scorer's other embedders are for faces still to decide: when models.threads gives each
        # embedder a thread (edge/pipeline.py) they run here, beside the primary, for every face on an undecided
        # track; on one thread they wait until the faces to decide are known (below), so a face whose liveness
        # challenge is under way costs no second model.
        passed = [i for i, r in enumerate(records) if r.passed]
        missing = [e for e in self.scorer.embedders if e != self.primary]
        undecided = [i for i in passed if not assigned[i][0].state.get("decided")] if self.pipeline.parallel else []
        vectors = self.pipeline.embed_jobs(frame.image, faces, {self.primary: passed,
                                                                **{m: undecided for m in missing}},
                                           primary_crops=np.stack([r.crop for r in records]) if records else None)
        for record, v in zip(records, vectors, strict=True):
            record.embeddings = v
        t = self._timed("embed", t)
        if self.live_gate is not None:
            self.live_gate.frame(assigned, frame.image, frame.t_capture)  # a challenge follows turned faces too
        pending: list[tuple[Any, Face, dict[str, np.ndarray], Any, float]] = []
        for (track, face), record in zip(assigned, records, strict=True):
            if not record.passed:
                continue
            emb = record.embeddings[self.primary]
            last = track.state.get("embedding")
            if last is not None and not accept(float(last @ emb), self.split_threshold):
                track = self.tracker.split(track, face, frame.t_capture)  # someone else stepped in
            track.state["embedding"] = emb
            # Company for the tailgating rule from now on, whether or not this frame scores the face (edge/decide.py)
            track.state[GATE_PASSED] = True
            if track.state.get("decided"):
                continue
            live = None
            if self.live_gate is not None:
                t = time.perf_counter()
                live = self.live_gate.observe(track, frame.image, face, frame.t_capture)
                t = self._timed("liveness", t)
                if live is None:
                    continue  # its liveness challenge is under way: nothing to decide on yet
            pending.append((track, face, dict(record.embeddings), live, frame_quality(record.quality)))
        # The other embedders for faces to decide that lack them: all of them on one thread; with threads, only a
        # face split off a decided track above (someone else stepped in).
        short = [k for k, (_, _, probe, _, _) in enumerate(pending) if any(m not in probe for m in missing)]
        deferred: set[int] = set()
        if len(short) > 1 and not self.pipeline.parallel:
            # One thread: the other models for one face per frame — the one whose track has waited longest — and
            # the others on the next frames. Otherwise a frame with two faces to decide costs both faces' second
            # models, and the frames queued behind it wait too (the one-thread latency tail,
            # docs/results/int8.md § 11); a face deferred here is observed again one frame later.
            short.sort(key=lambda k: pending[k][0].state.get("fused_at", float("-inf")))
            deferred, short = set(short[1:]), short[:1]
        if short:
            t = time.perf_counter()
            extra = self.pipeline.embed(frame.image, [pending[k][1] for k in short], missing)
            for k, more in zip(short, extra, strict=True):
                pending[k][2].update(more)
                pending[k][0].state["fused_at"] = frame.t_capture
            self._timed("embed", t)
        if deferred:
            pending = [p for k, p in enumerate(pending) if k not in deferred]
        claim = self.policy.claimed
        decisions = []
        for track, face, probe, live, quality in pending:
            t = time.perf_counter()
            # The track's best frames so far (edge/match/track.py): each observation scores their mean scores.
            best = track.state.setdefault("probe", TrackProbe(self.cfg.decision.track_frames)).add(quality, probe)
            result = (self.scorer.claim_track(best, claim) if claim is not None
                      else self.scorer.identify_track(best))
            obs = Observation(result.identity, result.candidate, result.score, result.threshold, live,
                              frame.t_capture, result.margin)
            t = self._timed("match", t)
            self.policy.observe(track, obs)
            others = [o for o in self.tracker.visible(frame.t_capture) if o.id != track.id]
            d = self.policy.evaluate(track, others, problems)
            if d is not None:
                decisions.append(d)
                if self.keep_crop is not None and self.keep_crop(d):
                    self._crops[d.track] = face_crop_png(frame.image, face)
            self._timed("decide", t)
        self._timed("frame", start)
        self.face_present = bool(faces)
        return decisions

    def take_crop(self, track_id: int) -> bytes | None:
        """The face crop kept for the decision of this track (PNG with its landmarks), once."""
        return self._crops.pop(track_id, None)

    def _gate_report(self, records: list[FaceRecord]) -> str | None:
        """Count the quality gate's refusals by reason (facegate_quality_rejections_total), log them at debug
        (rate-limited), and return the reason that keeps every face in view from a decision: the first one of
        the first refused face, or None when a face passed (or none is in view)."""
        first = None
        for record in records:
            if record.passed or record.quality is None:
                continue
            codes = self.gate.codes(record.quality)
            for code in codes:
                self.metrics.inc("quality_rejections_total", reason=code)
            if codes:
                gate_log.log(logging.DEBUG, f"quality:{codes[0]}", "face not used for a decision: %s",
                             "; ".join(record.reasons))
                first = first or codes[0]
        return None if any(r.passed for r in records) else first

    def faces(self, image: np.ndarray) -> list[Face]:
        with self.lock:
            return self.pipeline.detect(image, frame=True)
