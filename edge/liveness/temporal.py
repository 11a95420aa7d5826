"""Liveness over time, per face track: the k-of-n rule, the one-frame veto, and the challenge in between.

`TemporalRule` is the rule on its own (a track's per-frame results → live, spoof or pending):
- spoof at once when one frame is a high-confidence spoof (the check's `certain_spoof` score or lower) —
  an attack that shows itself clearly once is not given more frames to look live;
- spoof when k of the last n frames read spoof;
- live when k of the last n frames read live and none of them spoof;
- pending otherwise.
It is the same k-of-n rule the decision policy (edge/decide.py) applies to its observations, with the same
k and n from [decision], plus the veto.

`LivenessGate` applies it in the daemon, between the passive check and the decision policy, and runs the
active challenge (edge/liveness/challenge.py) when configured:
- `frame()` sees every tracked face of every frame (turned faces too: the challenge needs them);
- `observe()` sees the quality-passing faces of undecided tracks: it runs the passive check and returns the
  result the policy should record for this frame, or None while the track's challenge is under way (the
  policy then waits: no identity is decided before the challenge ends). A vetoed track gets "spoof" for every
  later frame and `track.state["liveness_spoof"]` (the reason), which the policy turns into a spoof decision
  at once; a failed or timed-out challenge gets "uncertain" (liveness incomplete: denied, not spoof).
- `take_prompts()` returns the instructions for the person (the daemon publishes them on the prompt topic);
- `wait_verified()` hands enrolment a frame of a face that passed all of it (edge/daemon.py's live capture).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge.liveness.base import LivenessCheck, LivenessResult
from edge.liveness.challenge import Challenge, ChallengeConfig, random_direction
from edge.vision.detect import Face
from edge.vision.quality import pose
from edge.vision.track import Track

if TYPE_CHECKING:
    from edge.config import Config

log = logging.getLogger("facegate.liveness")

STATE_KEY = "liveness_track"  # our per-track state inside Track.state
SPOOF_KEY = "liveness_spoof"  # the veto's reason, read by the decision policy
NOTE_KEY = "liveness_note"  # why liveness stayed incomplete (challenge failed or timed out)
LOOK_PROMPT = "look at the camera"


@dataclass(frozen=True)
class TemporalRule:
    k: int = 3
    n: int = 5
    certain_spoof: float | None = None  # a frame scoring at or below this is a high-confidence spoof

    def veto(self, result: LivenessResult) -> bool:
        return self.certain_spoof is not None and result.score is not None and result.score <= self.certain_spoof

    def judge(self, results: Sequence[LivenessResult]) -> tuple[str, str]:
        """("live" | "spoof" | "pending", reason) for a track's per-frame results, oldest first."""
        for r in results:
            if self.veto(r):
                return "spoof", f"liveness: a high-confidence spoof frame (score {r.score:.3f} ≤ {self.certain_spoof})"
        window = list(results)[-self.n:]
        verdicts = [r.verdict for r in window]
        spoofs, lives = verdicts.count("spoof"), verdicts.count("live")
        if spoofs >= self.k:
            return "spoof", f"liveness: {spoofs} of the last {len(window)} frames read spoof"
        if lives >= self.k and spoofs == 0:
            return "live", f"liveness: {lives} of the last {len(window)} frames read live"
        return "pending", ""


@dataclass
class TrackLiveness:
    """What the gate keeps for one track."""

    results: deque[LivenessResult]
    challenge: Challenge | None = None
    denied: str = ""  # the veto's reason, once vetoed
    incomplete: str = ""  # why the challenge ended without passing
    verified: bool = False  # passed the challenge (when configured) and the k-of-n rule
    timings_ms: dict[str, list[float]] = field(default_factory=lambda: {"passive": [], "tracking": []})


class LivenessGate:
    """The passive check, the temporal rule and the optional challenge, per track (see the module docstring)."""

    def __init__(self, check: LivenessCheck, k: int = 3, n: int = 5, challenge: ChallengeConfig | None = None,
                 prompt: Callable[[str], None] | None = None, direction: Callable[[], str] = random_direction,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.check = check
        self.rule = TemporalRule(k, n, getattr(check, "certain_spoof", None))
        self.challenge = challenge
        self._prompt = prompt
        self.prompts: list[str] = []  # instructions for the person, when no `prompt` callback is given
        self.direction = direction
        self.clock = clock
        self._verified: tuple[float, np.ndarray, Face] | None = None
        self._cond = threading.Condition()

    @property
    def name(self) -> str:
        return self.check.name

    def say(self, text: str) -> None:
        if self._prompt is not None:
            self._prompt(text)
        else:
            self.prompts.append(text)

    def take_prompts(self) -> list[str]:
        """The instructions queued since the last call (the daemon publishes them after its own prompts)."""
        out, self.prompts = self.prompts, []
        return out

    def state(self, track: Track) -> TrackLiveness:
        st = track.state.get(STATE_KEY)
        if st is None:
            st = track.state[STATE_KEY] = TrackLiveness(deque(maxlen=max(self.rule.n, 1)))
        return st

    # -- every frame --------------------------------------------------------------------------------------------
    def frame(self, assigned: Iterable[tuple[Track, Face]], image: np.ndarray, t: float) -> None:
        """Every tracked face of a frame: advance running challenges, remember verified faces for enrolment."""
        for track, face in assigned:
            st = track.state.get(STATE_KEY)
            if st is None:
                continue
            ch = st.challenge
            if ch is not None and not ch.done:
                t0 = time.perf_counter()
                state = ch.update(image, face, t)
                st.timings_ms["tracking"].append((time.perf_counter() - t0) * 1e3)
                if ch.done:
                    self._challenge_ended(track, st, state, ch.reason)
            if st.verified and not st.denied:
                with self._cond:
                    self._verified = (self.clock(), image, face)
                    self._cond.notify_all()

    def _challenge_ended(self, track: Track, st: TrackLiveness, state: str, reason: str) -> None:
        log.info("track %d: %s", track.id, reason)
        if state == "spoof":
            self._deny(track, st, reason)
        elif state == "passed":
            self.say(LOOK_PROMPT)
        else:
            st.incomplete = reason
            track.state[NOTE_KEY] = reason

    def _deny(self, track: Track, st: TrackLiveness, reason: str) -> None:
        if not st.denied:
            st.denied = reason
            track.state[SPOOF_KEY] = reason
            log.info("track %d denied: %s", track.id, reason)

    # -- quality-passing frames of undecided tracks ----------------------------------------------------------------
    def observe(self, track: Track, image: np.ndarray, face: Face, t: float) -> LivenessResult | None:
        """The passive check on this face, through the track's rule and challenge: what the policy records,
        or None while the challenge is under way."""
        st = self.state(track)
        t0 = time.perf_counter()
        result = self.check.check(image, face)
        st.timings_ms["passive"].append((time.perf_counter() - t0) * 1e3)
        st.results.append(result)
        if self.rule.veto(result):
            self._deny(track, st, self.rule.judge([result])[1])
        if st.denied:
            return LivenessResult("spoof", result.score)
        if self.challenge is not None:
            ch = st.challenge
            if ch is None:
                if abs(pose(face.landmarks)[0]) > self.challenge.start_yaw_deg:
                    return None  # wait for a roughly frontal face before asking for a turn
                ch = st.challenge = Challenge(self.challenge, self.direction(), image, face, t)
                log.info("track %d: challenge issued (%s)", track.id, ch.prompt)
                self.say(ch.prompt)
                return None
            if not ch.done:
                return None
            if ch.state != "passed":
                return LivenessResult("uncertain", result.score)
        if not st.verified and self.rule.judge(st.results)[0] == "live":
            st.verified = True
        return result

    # -- enrolment ---------------------------------------------------------------------------------------------------
    def wait_verified(self, timeout_s: float, since: float | None = None) -> tuple[np.ndarray, Face] | None:
        """A frame, seen after `since` (default: now), of a face whose track passed every check; None if none
        within `timeout_s`."""
        since = self.clock() if since is None else since
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._verified is None or self._verified[0] < since:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            _, image, face = self._verified
            return image, face


def gate_for(cfg: Config, check: LivenessCheck, prompt: Callable[[str], None] | None = None) -> LivenessGate:
    """The gate the daemon's configuration asks for: the challenge in the door profile when enabled."""
    lv = cfg.liveness
    challenge = None
    if cfg.profile == "door" and lv.challenge:
        challenge = ChallengeConfig(yaw_deg=lv.challenge_yaw_deg, timeout_s=lv.challenge_timeout_s)
    return LivenessGate(check, cfg.decision.k, cfg.decision.n, challenge, prompt)
