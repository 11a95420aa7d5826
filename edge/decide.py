"""The decision policy: per tracked face, a few frames' observations → granted, denied, unknown or spoof.

Rules (deploy/INTEGRATION.md explains them to integrators):
- granted: k of the last n observations name one enrolled identity at or above the threshold (the 1:N
  threshold at the current gallery size, or the 1:1 threshold under a badge claim), liveness passed
  (door profile: at least k "live" and no "spoof" verdict in the window), the identity is allowed now
  (its time windows), the system is healthy, and the tailgating rule allows it.
- denied: the identity is agreed on but not allowed now, or liveness stayed incomplete for a full window,
  or the system is unhealthy (fail-secure), or grants are switched off (`blocked`: the door profile's
  face-unlock switch, edge/door.py), or the tailgating rule refuses.
- unknown: a full window of n observations of a live face matched nobody, or no agreement within
  max_frames observations.
- spoof: k of the last n liveness verdicts say spoof.
Each track is decided once; an identity decided within `cooldown_s` is not announced again (one walk-up,
one event; the cooldown is per identity and decision).
Tailgating ("deny"): a grant waits while another face in view that passed the quality gate is undecided,
for at most `tailgating_wait` observations; it becomes denied if that face is, or stays, unrecognised.
Faces that never pass the quality gate (far away, turned aside) do not count.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.config import AccessConfig, DecisionConfig, parse_window
from edge.liveness.base import LivenessResult
from edge.vision.track import Track

DECISIONS = ("granted", "denied", "unknown", "spoof")


GATE_PASSED = "gate_passed"  # Track.state key: a face of this track passed the quality gate (set by the engine)


@dataclass(frozen=True)
class Observation:
    """One quality-gated frame of one track."""

    identity: str | None  # the best match at or above the threshold, else None
    candidate: str | None  # the best match whatever its score
    score: float | None  # the best match's score
    threshold: float
    liveness: LivenessResult | None  # None: not checked (kiosk)
    t_capture: float
    margin: float | None = None  # the best candidate's lead over the runner-up (edge/match Result.margin)


@dataclass(frozen=True)
class Decision:
    decision: str
    identity: str | None
    score: float | None
    threshold: float
    liveness: str  # live | spoof | uncertain | not_checked
    liveness_score: float | None
    frames: int  # observations of the track up to the decision
    reason: str
    track: int
    claim: str | None  # the identity a badge claimed, when the decision was 1:1
    t_capture: float  # capture time (monotonic) of the deciding frame
    # For the local decision log (not the MQTT event): the deciding observation's lead over the runner-up, and
    # the best match whatever its score (who an "unknown" face came closest to).
    margin: float | None = None
    candidate: str | None = None

    def event(self, model: str, latency_ms: float) -> dict[str, Any]:
        """The fields the daemon supplies to an MQTT event (the publisher adds id, seq, ts, device, door)."""
        # The event schema knows live | spoof | not_checked: an inconclusive check is reported as not_checked,
        # and `reason` says "liveness incomplete".
        verdict = "not_checked" if self.liveness == "uncertain" else self.liveness
        return {"decision": self.decision, "identity": self.identity,
                "score": None if self.score is None else round(self.score, 4), "threshold": round(self.threshold, 4),
                "liveness": {"verdict": verdict,
                             "score": None if self.liveness_score is None else round(self.liveness_score, 4)},
                "model": model, "frames": self.frames, "latency_ms": round(latency_ms, 1),
                "reason": self.reason, "claim": self.claim}


VALIDITY_KEYS = ("valid_from", "valid_until")


def within_validity(metadata: dict[str, Any], today: dt.date) -> tuple[bool, str]:
    """An identity's validity period from its metadata: "valid_from" / "valid_until" (ISO dates, both days
    included; either may be absent). A malformed date denies (fail-secure)."""
    bounds: dict[str, dt.date] = {}
    for key in VALIDITY_KEYS:
        raw = metadata.get(key)
        if raw in (None, ""):
            continue
        try:
            bounds[key] = dt.date.fromisoformat(str(raw))
        except ValueError:
            return False, f"malformed {key} in the identity's metadata"
    if "valid_from" in bounds and today < bounds["valid_from"]:
        return False, f"not valid before {bounds['valid_from']:%Y-%m-%d}"
    if "valid_until" in bounds and today > bounds["valid_until"]:
        return False, f"not valid after {bounds['valid_until']:%Y-%m-%d}"
    return True, ""


class AccessPolicy:
    """Who may enter when: the identity's validity period (metadata "valid_from" / "valid_until") first; then
    time windows per identity from the config, else from the identity's metadata (key "access": a list of
    windows), else the default. A malformed window or date in metadata denies (fail-secure)."""

    def __init__(self, cfg: AccessConfig, metadata: Callable[[str], dict[str, Any] | None] | None = None) -> None:
        self.default_allow = cfg.default == "allow"
        self.windows = {name: [parse_window(w) for w in ws] for name, ws in cfg.windows.items()}
        self.metadata = metadata
        self.tz = None
        if cfg.timezone:
            from zoneinfo import ZoneInfo

            self.tz = ZoneInfo(cfg.timezone)

    def allowed(self, name: str, when: dt.datetime | None = None) -> tuple[bool, str]:
        when = when or dt.datetime.now(self.tz)
        meta = (self.metadata(name) or {}) if self.metadata is not None else {}
        valid, why = within_validity(meta, when.date())
        if not valid:
            return False, why
        windows = self.windows.get(name)
        source = "config"
        if windows is None and self.metadata is not None:
            raw = meta.get("access")
            if raw is not None:
                source = "metadata"
                try:
                    if not isinstance(raw, list):
                        raise ValueError("not a list")
                    windows = [parse_window(str(w)) for w in raw]
                except ValueError:
                    return False, "malformed access windows in the identity's metadata"
        if windows is None:
            return self.default_allow, "" if self.default_allow else "no access windows (default deny)"
        minute, day = when.hour * 60 + when.minute, when.weekday()
        for days, start, end in windows:
            if start < end and day in days and start <= minute < end:
                return True, ""
            if end <= start and ((day in days and minute >= start) or ((day - 1) % 7 in days and minute < end)):
                return True, ""
        return False, f"outside its access windows ({source}) at {when:%a %H:%M}"


class Policy:
    """Turns observations into decisions; holds the per-identity cooldown and the badge claim."""

    def __init__(self, cfg: DecisionConfig, access: AccessPolicy, liveness_required: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.access = access
        self.liveness_required = liveness_required
        self.clock = clock
        self._last_event: dict[tuple[str, str], float] = {}  # (identity, decision) → when last announced
        self._claim: tuple[str, float] | None = None  # (identity, expiry)
        # Why grants are switched off right now (edge/door.py's face-unlock switch), else None: a would-be grant
        # is then denied with this reason, so nothing opens the door and the event says why.
        self.blocked: str | None = None

    # -- badge claims ---------------------------------------------------------------------------------------
    def claim(self, name: str, tracks: list[Track]) -> None:
        """The next decision is 1:1 against `name`: the faces in view start over under the claim."""
        self._claim = (name, self.clock() + self.cfg.claim_window_s)
        for tr in tracks:
            tr.state.pop("decided", None)
            tr.state.pop("window", None)
            tr.state.pop("eligible_at", None)

    def forget(self, name: str) -> None:
        """A deleted identity: no cooldown entry or pending claim may keep its name."""
        for key in [k for k in self._last_event if k[0] == name]:
            del self._last_event[key]
        if self._claim is not None and self._claim[0] == name:
            self._claim = None

    @property
    def claimed(self) -> str | None:
        if self._claim is not None and self.clock() >= self._claim[1]:
            self._claim = None
        return self._claim[0] if self._claim else None

    # -- observations and decisions -------------------------------------------------------------------------
    def observe(self, track: Track, obs: Observation) -> None:
        s = track.state
        s.setdefault("window", deque(maxlen=self.cfg.n)).append(obs)
        s["observations"] = s.get("observations", 0) + 1

    def evaluate(self, track: Track, others: list[Track], problems: list[str]) -> Decision | None:
        """A decision for `track` if its observations settle one, else None (wait for more frames).

        `others`: the other tracks in view; `problems`: health problems (any → no grant)."""
        s = track.state
        window: deque[Observation] = s.get("window", deque())
        if s.get("decided") or not window:
            return None
        k, n = self.cfg.k, self.cfg.n
        verdicts = [o.liveness.verdict for o in window if o.liveness is not None]
        spoofs, lives = verdicts.count("spoof"), verdicts.count("live")
        live_ok = not self.liveness_required or (lives >= k and spoofs == 0)
        counts = Counter(o.identity for o in window if o.identity is not None)
        top, agree = counts.most_common(1)[0] if counts else (None, 0)
        full = len(window) == n
        vetoed = s.get("liveness_spoof")  # edge/liveness/temporal.py: one high-confidence spoof frame, or the challenge
        if self.liveness_required and (spoofs >= k or vetoed):
            return self._decide(track, "spoof", top, window, vetoed or "liveness: spoof", "spoof")
        if top is not None and agree >= k:
            if not live_ok:
                if full:
                    note = s.get("liveness_note")  # why the challenge ended without passing, if it did
                    return self._decide(track, "denied", top, window,
                                        "liveness incomplete" + (f" ({note})" if note else ""), "uncertain")
                return None
            ok, why = self.access.allowed(top)
            if not ok:
                return self._decide(track, "denied", top, window, why)
            if problems:
                return self._decide(track, "denied", top, window, "unhealthy: " + "; ".join(problems))
            blocked = self.blocked
            if blocked:
                return self._decide(track, "denied", top, window, blocked)
            return self._tailgating(track, top, window, others)
        if full and not counts and live_ok:
            return self._decide(track, "unknown", None, window, "no match")
        if s.get("observations", 0) >= self.cfg.max_frames:
            return self._decide(track, "unknown", None, window, f"no agreement within {self.cfg.max_frames} frames",
                                None if live_ok else "uncertain")
        return None

    def _tailgating(self, track: Track, name: str, window: deque[Observation], others: list[Track]) -> Decision | None:
        s = track.state
        s["eligible_at"] = s.get("eligible_at", s["observations"])  # recognised and allowed: waiting at most
        # Faces that passed the quality gate at least once count, scored or not: the engine marks them
        # (GATE_PASSED) before it observes or defers them — a face waiting for a fusion's second model on one
        # thread (edge/engine.py) is company too — and a face the liveness challenge follows counts even on
        # frames where it is turned. Granted ones, and ones recognised and allowed but waiting like this one,
        # are allowed company (two colleagues arriving together both get in).
        company = [o for o in others if (o.state.get(GATE_PASSED) or o.state.get("liveness_track"))
                   and o.state.get("decided") != "granted" and "eligible_at" not in o.state]
        if not company or self.cfg.tailgating == "allow":
            reason = f"{len(company)} other face(s) in view" if company else ""
            return self._decide(track, "granted", name, window, reason)
        if any(o.state.get("decided") for o in company):
            return self._decide(track, "denied", name, window, "tailgating: an unrecognised face is in view")
        if s["observations"] - s["eligible_at"] >= self.cfg.tailgating_wait:
            return self._decide(track, "denied", name, window, "tailgating: another face in view stayed unrecognised")
        return None

    def _decide(self, track: Track, kind: str, identity: str | None, window: deque[Observation], reason: str,
                liveness: str | None = None) -> Decision | None:
        s = track.state
        s["decided"] = kind
        claim = self.claimed
        now = self.clock()
        if identity is not None and claim is None and kind in ("granted", "denied"):
            # Keyed by decision too: a "denied" (say, for tailgating) must not hide the "granted" of the
            # same person re-approaching alone a moment later.
            last = self._last_event.get((identity, kind))
            if last is not None and now - last < self.cfg.cooldown_s:
                s["decided"] = "cooldown"  # the same walk-up (or a re-approach within the cooldown): no event
                return None
            self._last_event[(identity, kind)] = now
        if claim is not None:
            self._claim = None  # a claim narrows exactly one decision
        matched = [o for o in window if o.identity == identity and o.score is not None] if identity else []
        scored = matched or [o for o in window if o.score is not None]
        best = max(scored, key=lambda o: o.score) if scored else None  # type: ignore[arg-type, return-value]
        score = best.score if best is not None else None
        live_scores = [o.liveness.score for o in window if o.liveness is not None and o.liveness.score is not None]
        if liveness is None:
            liveness = "not_checked" if not self.liveness_required else "live"
        return Decision(kind, identity, score, window[-1].threshold, liveness,
                        sum(live_scores) / len(live_scores) if live_scores else None,
                        s.get("observations", len(window)), reason, track.id, claim, window[-1].t_capture,
                        best.margin if best is not None else None, best.candidate if best is not None else None)
