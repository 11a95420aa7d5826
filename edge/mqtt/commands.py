"""Signed commands on facegate/<device>/cmd/<name>: reload, enroll, delete.

Envelope (the MQTT payload), JSON:

    {"signed": "<JSON text>", "hmac": "<hex HMAC-SHA256(secret, UTF-8 bytes of the signed text)>"}

where the signed text is a JSON object

    {"v": 1, "device": "door1" | null, "command": "enroll", "sender": "admin", "counter": 42, "body": {...}}

The MAC covers the signed text byte for byte, so a client in any language signs the exact string it sends and no
canonical JSON form has to be agreed on. `command` must equal the topic's <name> (a signed "reload" cannot be
re-aimed at cmd/delete) and `device` must be this device, or null for a command meant for every device sharing
the secret (give each device its own secret to rule that out).

Replays: each sender has a counter that must be strictly above the last one accepted from it. The last accepted
counters are persisted atomically before the command runs, so a captured command fails after a restart too, and
no synchronised clock is needed (doors often have none). Refusals change nothing: the counter is consumed only by
a command that passed every check.

Bodies: reload {}; delete {"name": str}; enroll {"name": str, "image": base64 str, "live_capture": bool}
("image" may be left out when live_capture is true: the daemon then captures the face itself).

Outcome (cmd_result): "refused" (not run: `reason` says why), "error" (run, but it failed or did not do what was
asked: a delete of an unknown name, an enrolment the quality gate refused; `detail` says why) or "ok".

The secret is the UTF-8 bytes of its text (the file's content, surrounding whitespace stripped), never decoded
from hex or base64: a secret made with `openssl rand -hex 32` is those 64 characters. (The store key, by
contrast, is decoded to 32 bytes: edge/store/crypto.py.) deploy/INTEGRATION.md has a Python and an openssl
example.

Badge claims on facegate/<device>/claim use the same envelope with "command": "claim" and body
{"identity": str}, signed with the claim secret (a badge reader's, not the administrator's), and their own
per-sender counters (ClaimVerifier).

Anything malformed — not JSON, nested too deeply, a number of thousands of digits, a non-ASCII or wrong-length
MAC, text that is not valid Unicode — is refused with a reason like any other refusal, never an exception escaping
to the log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.atomic import atomic_write_bytes
from edge.errors import FacegateError
from edge.ratelimit import LogLimiter, printable

log = logging.getLogger(__name__)
limited = LogLimiter(log)

VERSION = 1
COMMANDS = ("reload", "enroll", "delete")
CLAIM = "claim"
CLAIM_MODES = ("signed", "unsigned", "off")
MAC_RE = re.compile(r"[0-9a-fA-F]{64}")
MAX_TEXT = 200
MAX_COUNTER = 2**63 - 1
MAX_IMAGE_B64 = 16 * 1024 * 1024  # ~12 MB decoded: a photo, not a video


class CommandHandlers(Protocol):
    """Implemented by the daemon core; each returns a JSON-serialisable summary for cmd_result."""

    def reload(self) -> dict: ...

    def enroll(self, name: str, image_jpeg: bytes, live_capture: bool) -> dict: ...

    def delete(self, name: str) -> dict: ...


class Refused(Exception):
    """A command that is not run; `reason` is a stable code for clients, `detail` a sentence for people."""

    def __init__(self, reason: str, detail: str, sender: str | None = None, counter: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.sender = sender
        self.counter = counter


@dataclass(frozen=True)
class Command:
    name: str
    sender: str
    counter: int
    body: dict[str, Any]


def sign_command(secret: bytes, sender: str, counter: int, name: str, body: dict[str, Any],
                 device: str | None = None) -> bytes:
    """The MQTT payload of a signed command (for clients and tests); bind it to one `device` when you can."""
    signed = json.dumps({"v": VERSION, "device": device, "command": name, "sender": sender, "counter": counter,
                         "body": body}, separators=(",", ":"))
    mac = hmac.new(secret, signed.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"signed": signed, "hmac": mac}).encode()


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT \
            or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Refused("invalid_body", f"{what} must be 1 to {MAX_TEXT} characters without control characters")
    return value


def _json(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused("malformed", f"{what} is not JSON") from None
    except ValueError:  # a number of more than 4300 digits: Python's int-from-text limit, not a JSONDecodeError
        raise Refused("malformed", f"{what} holds a number too long to read") from None
    except RecursionError:  # deeply nested arrays or objects: json.loads recurses once per level
        raise Refused("malformed", f"{what} is nested too deeply") from None


def verify_command(secret: bytes, device: str, name: str, payload: bytes,
                   allowed: tuple[str, ...] = COMMANDS) -> Command:
    """Check the envelope and its MAC; the counter is checked by CounterStore. Raises Refused."""
    envelope = _json(payload, "the payload")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("signed"), str):
        raise Refused("unsigned", 'no "signed" text in the envelope')
    mac = envelope.get("hmac")
    if not isinstance(mac, str):
        raise Refused("unsigned", 'no "hmac" in the envelope')
    if not MAC_RE.fullmatch(mac):
        raise Refused("bad_signature", "the HMAC is not 64 hexadecimal characters")
    try:
        signed_bytes = envelope["signed"].encode()
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: no UTF-8 bytes to check a MAC over
        raise Refused("malformed", "the signed text is not valid Unicode") from None
    expected = hmac.new(secret, signed_bytes, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, mac.lower()):
        raise Refused("bad_signature", "the HMAC does not match (wrong secret or altered command)")
    # Authentic from here on: the fields below were written by someone holding the secret.
    signed = _json(envelope["signed"], "the signed text")
    if not isinstance(signed, dict) or signed.get("v") != VERSION:
        raise Refused("malformed", f"unsupported envelope version (this device reads v{VERSION})")
    sender, counter, body = signed.get("sender"), signed.get("counter"), signed.get("body")
    if not isinstance(sender, str) or not sender or len(sender) > MAX_TEXT:
        raise Refused("malformed", "sender must be a non-empty string")
    if isinstance(counter, bool) or not isinstance(counter, int) or not 0 < counter <= MAX_COUNTER:
        raise Refused("malformed", "counter must be a positive 64-bit integer", sender)
    if signed.get("device") not in (None, device):
        raise Refused("wrong_device", f"signed for device {signed.get('device')!r}", sender, counter)
    if signed.get("command") != name:
        raise Refused("wrong_command", f"signed as {signed.get('command')!r}, received on cmd/{printable(name, 40)}",
                      sender, counter)
    if name not in allowed:
        raise Refused("unknown_command", f"{name!r} is not one of {', '.join(allowed)}", sender, counter)
    if not isinstance(body, dict):
        raise Refused("invalid_body", "body must be an object", sender, counter)
    return Command(name, sender, counter, body)


def parse_body(command: Command) -> dict[str, Any]:
    """The handler's keyword arguments, or Refused("invalid_body")."""
    body = command.body
    allowed = {"reload": set(), "delete": {"name"}, "enroll": {"name", "image", "live_capture"}}[command.name]
    extra = sorted(set(body) - allowed)
    try:
        if extra:
            raise Refused("invalid_body", f"unexpected field(s) {', '.join(extra)}")
        if command.name == "reload":
            return {}
        if command.name == "delete":
            return {"name": _text(body.get("name"), "name")}
        live = body.get("live_capture", False)
        if not isinstance(live, bool):
            raise Refused("invalid_body", "live_capture must be true or false")
        image = body.get("image")
        if image is None and live:
            data = b""
        elif not isinstance(image, str) or not image or len(image) > MAX_IMAGE_B64:
            raise Refused("invalid_body", f"image must be base64 text of at most {MAX_IMAGE_B64} characters")
        else:
            try:
                data = base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                raise Refused("invalid_body", "image is not valid base64") from None
        return {"name": _text(body.get("name"), "name"), "image_jpeg": data, "live_capture": live}
    except Refused as exc:
        exc.sender, exc.counter = command.sender, command.counter
        raise


class CounterStore:
    """The last accepted counter of each sender, in a JSON file replaced atomically (write, fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._counters: dict[str, int] | None = None
        self._error: str | None = None
        try:
            raw = json.loads(self.path.read_text()) if self.path.exists() else {}
            if not isinstance(raw, dict) or not all(isinstance(k, str) and type(v) is int for k, v in raw.items()):
                raise ValueError("expected an object of sender → integer")
            self._counters = raw
        except (OSError, ValueError) as exc:
            # Fail closed: starting from empty counters would let every recorded command be replayed.
            self._error = f"{self.path} is unreadable ({exc}); commands are refused until it is fixed or removed"
            log.error("mqtt commands: %s", self._error)

    def last(self, sender: str) -> int:
        with self._lock:
            return (self._counters or {}).get(sender, 0)

    def advance(self, sender: str, counter: int) -> None:
        """Record `counter` for `sender` on disk, or raise Refused("replay") if it is not above the last one."""
        with self._lock:
            if self._counters is None:
                raise Refused("counter_state_unreadable", self._error or "", sender, counter)
            last = self._counters.get(sender, 0)
            if counter <= last:
                raise Refused("replay", f"counter {counter} is not above {last}, the last accepted from {sender!r}",
                              sender, counter)
            updated = {**self._counters, sender: counter}
            self._write(updated)
            self._counters = updated

    def _write(self, counters: dict[str, int]) -> None:
        atomic_write_bytes(self.path, json.dumps(counters, sort_keys=True).encode())  # 0600, fsynced


class CommandProcessor:
    """Verify, de-duplicate and run one command; returns the cmd_result document (without its timestamp)."""

    def __init__(self, device: str, secret: bytes | None, state_path: Path, handlers: CommandHandlers | None,
                 forget: Callable[[str], None]) -> None:
        self.device = device
        self.secret = secret
        self.handlers = handlers
        self.forget = forget
        self.counters = CounterStore(state_path) if secret is not None else None

    def refusal(self, name: str, exc: Refused) -> dict[str, Any]:
        """The cmd_result of a command that is not run, after one rate-limited log line."""
        # The name is the topic's last level, chosen by whoever published: escaped, so that a newline, U+2028 or
        # a bidi override cannot forge or reorder log lines.
        limited.warning(f"refused:{exc.reason}", "mqtt command %s refused: %s (%s)", printable(name, 40),
                        exc.reason, printable(exc.detail, 300))
        return {"command": name, "sender": exc.sender, "counter": exc.counter, "accepted": False,
                "status": "refused", "reason": exc.reason, "detail": exc.detail, "result": None}

    def handle(self, name: str, payload: bytes) -> dict[str, Any]:
        try:
            if self.secret is None or self.counters is None or self.handlers is None:
                why = "no command_secret is configured" if self.secret is None else "no command handlers"
                raise Refused("commands_disabled", f"commands are disabled on this device ({why})")
            command = verify_command(self.secret, self.device, name, payload)
            kwargs = parse_body(command)
            self.counters.advance(command.sender, command.counter)  # persisted before anything runs
        except Refused as exc:
            return self.refusal(name, exc)
        outcome: dict[str, Any] = {"command": name, "sender": command.sender, "counter": command.counter,
                                   "accepted": True, "status": "ok", "reason": None, "detail": None, "result": None}
        log.info("mqtt command %s from %s (counter %d) accepted", name, printable(command.sender, 40),
                 command.counter)
        try:
            handler = getattr(self.handlers, name)
            outcome["result"] = result = handler(**kwargs)
            if isinstance(result, dict) and result.get("ok") is False:
                # Run, but it did not do what was asked (a delete of a name nobody has, an enrolment the quality
                # gate refused): an error the sender must see in `status`, not an "ok" with a buried flag.
                reasons = result.get("reasons") or []
                detail = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
                outcome.update(status="error", detail=(detail or f"{name} did not succeed")[:500])
        except FacegateError as exc:
            outcome.update(status="error", detail=str(exc)[:500])
            log.warning("mqtt command %s failed: %s", name, exc)
        except Exception as exc:
            outcome.update(status="error", detail=f"internal error ({type(exc).__name__})")
            log.exception("mqtt command %s crashed", name)
        finally:
            if name == "delete":
                # Erasure goes on even if the store said no: pending events and retained state must not keep
                # naming someone who asked to be deleted.
                self.forget(kwargs["name"])
        return outcome


def parse_unsigned_claim(payload: bytes) -> str:
    """An identity name, as text or {"identity": name}; Refused otherwise (mqtt.claims = "unsigned")."""
    try:
        text = payload.decode().strip()
    except UnicodeDecodeError:
        raise Refused("malformed", "the claim is not UTF-8 text") from None
    if text.startswith("{"):
        doc = _json(text, "the claim")
        text = doc.get("identity") if isinstance(doc, dict) else None
    return _text(text, "the claimed identity")


class ClaimVerifier:
    """Badge claims (facegate/<device>/claim), by `mode`:
    - "signed": the command envelope with "command": "claim" and body {"identity": name}, MAC'd with the claim
      secret and with per-sender counters like commands (a recorded swipe cannot be replayed);
    - "unsigned": a bare name or {"identity": name} (kiosk profile only: the door profile refuses it at start);
    - "off": every claim is refused.
    """

    def __init__(self, mode: str, device: str, secret: bytes | None, state_path: Path) -> None:
        if mode not in CLAIM_MODES:
            raise FacegateError(f"claims mode {mode!r} is not one of {', '.join(CLAIM_MODES)}")
        self.mode = mode
        self.device = device
        self.secret = secret
        self.counters = CounterStore(state_path) if mode == "signed" and secret is not None else None

    def verify(self, payload: bytes) -> tuple[str, str | None]:
        """(identity, sender or None); Refused with the reason otherwise."""
        if self.mode == "off":
            raise Refused("claims_disabled", "claims are off on this device (mqtt.claims = \"off\")")
        if self.mode == "unsigned":
            return parse_unsigned_claim(payload), None
        if self.secret is None or self.counters is None:
            raise Refused("claims_disabled", "signed claims need a claim secret (mqtt.claim_secret_file or the "
                                             "credential facegate.claim-secret)")
        command = verify_command(self.secret, self.device, CLAIM, payload, allowed=(CLAIM,))
        body = command.body
        extra = sorted(set(body) - {"identity"})
        try:
            if extra:
                raise Refused("invalid_body", f"unexpected field(s) {', '.join(extra)}")
            identity = _text(body.get("identity"), "identity")
        except Refused as exc:
            exc.sender, exc.counter = command.sender, command.counter
            raise
        self.counters.advance(command.sender, command.counter)
        return identity, command.sender

    def parse(self, payload: bytes) -> str | None:
        """The claimed identity, or None after one rate-limited log line saying why the claim was refused."""
        try:
            return self.verify(payload)[0]
        except Refused as exc:
            limited.warning(f"claim:{exc.reason}", "mqtt claim refused: %s (%s)", exc.reason, exc.detail)
            return None
