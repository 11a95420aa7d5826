"""The outbox, settings and command verification on their own: no broker needed."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from edge.mqtt import MqttError
from edge.mqtt.commands import (
    ClaimVerifier,
    CommandProcessor,
    CounterStore,
    Refused,
    parse_body,
    sign_command,
    verify_command,
)
from edge.mqtt.outbox import Outbox
from edge.mqtt.settings import MqttSettings

SECRET = b"0123456789abcdef-test-secret"


def _event(identity: str | None = "alice"):
    return lambda seq: {"event_id": str(uuid.uuid4()), "seq": seq, "identity": identity, "decision": "granted"}


def test_seq_is_monotonic_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = Outbox(path, "door1")
    assert [first.add(_event())[0]["seq"] for _ in range(3)] == [1, 2, 3]
    first.remove([1, 2, 3])
    first.close()
    box = Outbox(path, "door1")
    assert box.depth == 0
    assert box.add(_event())[0]["seq"] == 4  # an emptied outbox does not restart the count
    assert Outbox(path, "door2").add(_event())[0]["seq"] == 1  # per device
    assert path.stat().st_mode & 0o777 == 0o600


def test_concurrent_adds_get_distinct_ordered_seqs(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", "door1")
    seqs: list[int] = []
    lock = threading.Lock()

    def add() -> None:
        for _ in range(25):
            seq = box.add(_event())[0]["seq"]
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 101))
    assert [s for s, _ in box.pending(0, 1000)] == list(range(1, 101))
    assert box.depth == 100


def test_full_outbox_drops_oldest_and_counts_persistently(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, "door1", limit=3)
    dropped = [box.add(_event())[1] for _ in range(5)]
    assert [d for d in dropped if d] == [[(1, dropped[3][0][1])], [(2, dropped[4][0][1])]]
    assert box.depth == 3 and box.dropped == 2
    assert [s for s, _ in box.pending(0, 10)] == [3, 4, 5]
    box.close()
    assert Outbox(path, "door1", limit=3).dropped == 2


def test_pending_is_ordered_and_windowed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", "door1")
    for _ in range(5):
        box.add(_event())
    assert [s for s, _ in box.pending(2, 2)] == [3, 4]
    assert json.loads(box.pending(0, 1)[0][1])["seq"] == 1
    assert box.remove([1, 99]) == 1 and box.depth == 4  # an unknown seq (dropped, forgotten) is ignored


def test_forget_erases_the_rows_and_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, "door1")
    for who in ("zoe-forgettable", "bob", "zoe-forgettable", None):
        box.add(_event(who))
    assert box.forget("zoe-forgettable") == 2
    assert box.depth == 2
    assert [json.loads(p)["identity"] for _, p in box.pending(0, 10)] == ["bob", None]
    for f in tmp_path.iterdir():
        assert b"zoe-forgettable" not in f.read_bytes(), f.name


def test_forget_erases_events_naming_the_person_as_a_badge_claim(tmp_path: Path) -> None:
    # Decision.event under a badge claim that the face did not match: identity null, the name only in `claim`.
    path = tmp_path / "outbox.db"
    box = Outbox(path, "door1")

    def claimed(identity: str | None, claim: str | None, reason: str = "no match"):
        return lambda seq: {"event_id": str(uuid.uuid4()), "seq": seq, "identity": identity, "claim": claim,
                            "decision": "unknown", "reason": reason}

    box.add(claimed(None, "zoe-claimed"))
    box.add(claimed("bob", "zoe-claimed"))  # bob's face under zoe's badge names zoe too
    box.add(claimed(None, "bob", reason="zoe-claimed-but-not-a-name-field-match"))
    box.add(claimed(None, "zoe-claimed-x"))  # another person whose name merely starts the same
    assert box.forget("zoe-claimed") == 2
    assert box.depth == 2
    assert [json.loads(p)["claim"] for _, p in box.pending(0, 10)] == ["bob", "zoe-claimed-x"]
    box.close()
    for f in tmp_path.iterdir():
        assert b'"zoe-claimed"' not in f.read_bytes(), f.name


def test_outbox_refuses_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(MqttError, match="not a facegate outbox"):
        Outbox(path, "door1")


@pytest.mark.parametrize("bad", [
    {"device": "door/1"}, {"device": "door+"}, {"port": 0}, {"topic_prefix": "a/#"},
    {"topic_prefix": "a//b"}, {"tls_cert": Path("c.pem")}, {"password": "x"}, {"outbox_limit": 0},
    {"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, {"command_secret": b"short"},
])
def test_settings_reject_unsafe_values(bad: dict) -> None:
    with pytest.raises(MqttError):
        MqttSettings(**bad)


@pytest.mark.parametrize(("values", "key"), [
    ({"command_state_path": "{d}/c.json", "claim_state_path": "{d}/c.json"}, "claim_state_path"),
    ({"command_state_path": "{d}/c.json", "claim_state_path": "{d}/sub/../c.json"}, "claim_state_path"),
    ({"command_state_path": "{d}/c.json", "claim_state_path": "{d}/link.json"}, "claim_state_path"),
    ({"outbox_path": "{d}/o.db", "command_state_path": "{d}/o.db"}, "command_state_path"),
])
def test_settings_refuse_two_state_files_in_one(tmp_path: Path, values: dict, key: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "c.json")
    with pytest.raises(MqttError, match=f"mqtt.{key}: .* same file as"):
        MqttSettings(device="door1", **{k: v.format(d=tmp_path) for k, v in values.items()})
    MqttSettings(device="door1", command_state_path=str(tmp_path / "c.json"),
                 claim_state_path=str(tmp_path / "claims.json"))  # distinct files are fine


def test_settings_from_mapping_and_topics(tmp_path: Path) -> None:
    s = MqttSettings.from_mapping({"device": "lobby", "tls_ca": str(tmp_path / "ca.crt"), "command_secret": "x" * 20,
                                   "topic_prefix": "site/facegate"})
    assert s.tls_ca == str(tmp_path / "ca.crt") and s.secret_bytes("command_secret") == b"x" * 20 and s.tls
    assert s.topic("cmd", "reload") == "site/facegate/lobby/cmd/reload"
    assert s.effective_client_id == "facegate-lobby"
    with pytest.raises(MqttError, match="unknown mqtt setting"):
        MqttSettings.from_mapping({"hots": "x"})


# -- command verification ----------------------------------------------------------------------------------
def test_a_signed_command_verifies() -> None:
    payload = sign_command(SECRET, "admin", 7, "delete", {"name": "bob"}, device="door1")
    command = verify_command(SECRET, "door1", "delete", payload)
    assert (command.sender, command.counter, command.body) == ("admin", 7, {"name": "bob"})
    assert parse_body(command) == {"name": "bob"}
    # Unbound (device null) commands are accepted by every device holding the secret.
    assert verify_command(SECRET, "door9", "reload", sign_command(SECRET, "admin", 1, "reload", {})).name == "reload"


@pytest.mark.parametrize(("payload", "name", "reason"), [
    (b"not json", "reload", "malformed"),
    (json.dumps({"sender": "admin", "counter": 1, "body": {}}).encode(), "reload", "unsigned"),
    (sign_command(b"another-secret-of-16+", "admin", 1, "reload", {}), "reload", "bad_signature"),
    (sign_command(SECRET, "admin", 1, "reload", {}, device="door2"), "reload", "wrong_device"),
    (sign_command(SECRET, "admin", 1, "reload", {}), "delete", "wrong_command"),
    (sign_command(SECRET, "admin", 0, "reload", {}), "reload", "malformed"),
    (sign_command(SECRET, "admin", 1, "shutdown", {}), "shutdown", "unknown_command"),
    # Over Python's 4300-digit int limit json.loads raises a plain ValueError, not a JSONDecodeError.
    pytest.param(b'{"signed": "x", "hmac": ' + b"1" * 5000 + b"}", "reload", "malformed", id="huge-number"),
])
def test_bad_commands_are_refused(payload: bytes, name: str, reason: str) -> None:
    with pytest.raises(Refused) as info:
        verify_command(SECRET, "door1", name, payload)
    assert info.value.reason == reason


@pytest.mark.parametrize("mode", ["signed", "unsigned"])
def test_a_claim_with_a_huge_number_is_refused_as_malformed(tmp_path: Path, mode: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    verifier = ClaimVerifier(mode, "door1", SECRET, tmp_path / "claims.json")
    huge = b'{"identity": ' + b"1" * 5000 + b"}" if mode == "unsigned" else \
        b'{"signed": "x", "hmac": ' + b"1" * 5000 + b"}"
    with pytest.raises(Refused) as info:
        verifier.verify(huge)
    assert info.value.reason == "malformed"
    with caplog.at_level("DEBUG"):
        assert verifier.parse(huge) is None  # one refusal line, no exception
    assert not any(r.exc_info for r in caplog.records)


def test_an_altered_signed_text_fails_the_mac() -> None:
    envelope = json.loads(sign_command(SECRET, "admin", 5, "delete", {"name": "bob"}))
    envelope["signed"] = envelope["signed"].replace("bob", "eve")
    with pytest.raises(Refused, match="bad_signature"):
        verify_command(SECRET, "door1", "delete", json.dumps(envelope).encode())


@pytest.mark.parametrize("body", [
    {"name": "x", "image": "%%%not-base64"}, {"name": "x"}, {"name": "", "image": "aGk="},
    {"name": "x", "image": "aGk=", "live_capture": "yes"}, {"name": "x", "image": "aGk=", "extra": 1},
])
def test_invalid_enrol_bodies_are_refused(body: dict) -> None:
    command = verify_command(SECRET, "door1", "enroll", sign_command(SECRET, "a", 1, "enroll", body))
    with pytest.raises(Refused, match="invalid_body"):
        parse_body(command)


def test_counters_are_strictly_increasing_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "state" / "counters.json"
    store = CounterStore(path)
    store.advance("admin", 5)
    for stale in (5, 4):
        with pytest.raises(Refused, match="replay"):
            store.advance("admin", stale)
    store.advance("other", 1)  # per sender
    assert CounterStore(path).last("admin") == 5
    assert path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in path.parent.iterdir() if p.name != "counters.json"]  # no temporary files left


def test_an_unreadable_counter_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "counters.json"
    path.write_text("{garbage")
    forgotten: list[str] = []
    processor = CommandProcessor("door1", SECRET, path, handlers=object(), forget=forgotten.append)  # type: ignore[arg-type]
    result = processor.handle("reload", sign_command(SECRET, "admin", 1, "reload", {}))
    assert (result["accepted"], result["reason"]) == (False, "counter_state_unreadable")
    assert path.read_text() == "{garbage"


def test_delete_forgets_even_when_the_store_fails(tmp_path: Path) -> None:
    class Failing:
        def delete(self, name: str) -> dict:
            raise RuntimeError("disk on fire")

    forgotten: list[str] = []
    processor = CommandProcessor("door1", SECRET, tmp_path / "c.json", Failing(), forgotten.append)  # type: ignore[arg-type]
    result = processor.handle("delete", sign_command(SECRET, "admin", 1, "delete", {"name": "bob"}))
    assert (result["accepted"], result["status"], result["detail"]) == (True, "error", "internal error (RuntimeError)")
    assert forgotten == ["bob"]


# Topic levels that mosquitto lets through: C1 controls, the line separator, bidi overrides (it refuses only C0).
HOSTILE_NAMES = ["x\u202eKCOLNU", "x\u2028CRITICAL fake", "x\u0085CRITICAL fake", "x\nCRITICAL fake"]


def _unsafe_characters(text: str) -> list[str]:
    return [c for c in text if not (32 <= ord(c) < 127)]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_command_name_reaches_the_log_escaped(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from edge.mqtt import commands
    from edge.ratelimit import LogLimiter

    monkeypatch.setattr(commands, "limited", LogLimiter(commands.log, interval=0.0))  # every refusal logged
    processor = CommandProcessor("door1", SECRET, tmp_path / "c.json", object(), lambda _: None)  # type: ignore[arg-type]
    with caplog.at_level("DEBUG"):
        for payload in (b"{}", sign_command(SECRET, "admin", 1, "reload", {})):  # unsigned; signed for another
            assert processor.handle(name, payload)["status"] == "refused"
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 2
    assert all(not _unsafe_characters(line) for line in lines), lines
    assert all(ascii(name[1:])[1:-1] in line for line in lines)  # still named, escaped


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_retained_message_on_a_hostile_topic_is_logged_escaped(tmp_path: Path, name: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import paho.mqtt.client as mqtt

    from edge.mqtt import publisher
    from edge.mqtt.publisher import Publisher
    from edge.ratelimit import LogLimiter

    monkeypatch.setattr(publisher, "limited", LogLimiter(publisher.log, interval=0.0))  # every line logged

    pub = Publisher(MqttSettings(host="127.0.0.1", port=1883, device="door1", discovery=False,
                                 outbox_path=str(tmp_path / "o.db")))  # never started: no broker needed
    try:
        message = mqtt.MQTTMessage(topic=f"facegate/door1/cmd/{name}".encode())
        message.retain = True
        with caplog.at_level("DEBUG"):
            pub._on_message(pub._client, None, message)
    finally:
        pub.close()
    lines = [r.getMessage() for r in caplog.records if "retained" in r.getMessage()]
    assert lines and all(not _unsafe_characters(line) for line in lines), lines


def test_retained_junk_on_many_command_topics_logs_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # What a reconnect hands over when somebody left retained messages on thousands of cmd/<x> topics.
    import paho.mqtt.client as mqtt

    from edge.mqtt import publisher
    from edge.mqtt.publisher import Publisher
    from edge.ratelimit import LogLimiter

    limiter = LogLimiter(publisher.log)  # a fresh one: nothing logged by other tests within its interval
    monkeypatch.setattr(publisher, "limited", limiter)
    pub = Publisher(MqttSettings(host="127.0.0.1", port=1883, device="door1", discovery=False,
                                 outbox_path=str(tmp_path / "o.db")), door_profile=True)
    try:
        with caplog.at_level("DEBUG"):
            for topic in [f"cmd/x{i}" for i in range(500)] + ["door/set", "claim"]:
                message = mqtt.MQTTMessage(topic=f"facegate/door1/{topic}".encode())
                message.retain = True
                pub._on_message(pub._client, None, message)
    finally:
        pub.close()
    lines = [r.getMessage() for r in caplog.records if "ignored a retained message" in r.getMessage()]
    assert len(lines) == 3, lines  # one per kind of topic: cmd/+, door/set, claim
    assert len(limiter._last) == 3  # the limiter's table does not grow with each new name
    assert pub._jobs.qsize() == 0  # and none of them was queued to be acted on


def test_incoming_messages_are_bounded_by_what_their_topic_needs_and_in_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """What paho hands over is checked before it is queued: a 1.5 MB claim or door/set is junk, and enrolment
    photos may fill the worker's queue only up to its byte budget. Each kind of drop logs once, not per message."""
    import paho.mqtt.client as mqtt

    from edge.mqtt import publisher
    from edge.mqtt.publisher import MAX_CONTROL_JOBS, MAX_JOB_BYTES, MAX_JOBS, Publisher
    from edge.ratelimit import LogLimiter

    monkeypatch.setattr(publisher, "limited", LogLimiter(publisher.log))  # fresh: nothing logged within 10 s
    pub = Publisher(MqttSettings(host="127.0.0.1", port=1883, device="door1", discovery=False,
                                 outbox_path=str(tmp_path / "o.db"), command_secret="x" * 20), door_profile=True)

    def deliver(topic: str, payload: bytes, n: int = 1) -> None:
        for _ in range(n):
            message = mqtt.MQTTMessage(topic=f"facegate/door1/{topic}".encode())
            message.payload = payload
            pub._on_message(pub._client, None, message)

    try:
        with caplog.at_level("DEBUG"):
            deliver("claim", b"x" * 1_500_000, 50)
            deliver("door/set", b"UNLOCK" + b" " * 100_000, 50)
            assert pub._jobs.qsize() == 0 and not pub._control_jobs
            deliver("cmd/reload", b"{" * 100_000, 3)  # refused for its size, not dropped silently: tiny jobs
            assert pub._jobs.qsize() == 3 and pub._jobs_bytes == 0
            photo = b"x" * (10 * 1024 * 1024)  # an enrolment may be this big
            deliver("cmd/enroll", photo, 20)
            assert pub._jobs_bytes <= MAX_JOB_BYTES and pub._jobs.qsize() == 3 + MAX_JOB_BYTES // len(photo)
            deliver("cmd/junk", b"{}", 2 * MAX_JOBS)
            assert pub._jobs.qsize() == MAX_JOBS
            deliver("door/set", b"UNLOCK", 2 * MAX_CONTROL_JOBS)
            assert len(pub._control_jobs) == MAX_CONTROL_JOBS
    finally:
        pub.close()
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert 1 <= len(drops) <= 5, drops  # one per kind (claim, door/set, cmd/+, a full queue, full control)
