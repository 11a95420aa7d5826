"""The admin page inside `facegate run`: the daemon writes the decision log the page shows (unknown faces'
crops only when asked, sealed with the store key), the page's door switch suspends face unlock in the running
daemon, a deletion made on the page erases the person from the log, and `run --check` asks for an account.
Real models, real LFW photos played as a camera, a real uvicorn server on loopback."""

import http.cookiejar
import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the admin page needs the [web] extra")

from edge.config import parse
from edge.daemon import Daemon
from edge.decision_log import DecisionLog
from edge.demo_daemon import running
from edge.sinks.log import LogSink
from edge.store.crypto import new_key
from edge.web.accounts import Accounts
from tests.mqtt_broker import wait_until

PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def clip(lfw, tmp_path_factory) -> dict[str, Path]:
    """An image folder: an enrolled person (another photo than the enrolment one), nobody, a stranger."""
    root = lfw / "images"
    folder = tmp_path_factory.mktemp("webclip")
    shutil.copy(root / "Colin_Powell/Colin_Powell_0040.jpg", folder / "01_colin.jpg")
    cv2.imwrite(str(folder / "02_empty.png"), np.full((250, 250, 3), 120, np.uint8))
    shutil.copy(root / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", folder / "03_stranger.jpg")
    return {"folder": folder, "enrol": root / "Colin_Powell/Colin_Powell_0038.jpg",
            "other": sorted((root / "Tony_Blair").glob("*.jpg"))[0]}


def _config(tmp_path: Path, clip: dict[str, Path], **sections) -> dict:
    base = {"profile": "kiosk",
            "camera": {"source": str(clip["folder"]), "fps": 30, "frames_per_image": 8, "every_frame": True},
            "store": {"path": str(tmp_path / "s.db"), "create": True},
            "mqtt": {"enabled": False},
            "health": {"listen": "127.0.0.1:0"},
            "web": {"enabled": True, "listen": "127.0.0.1:0", "accounts_path": str(tmp_path / "accounts.db"),
                    "decisions_path": str(tmp_path / "decisions.db")}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return base


class Browser:
    """A logged-in HTTP client (cookies kept, redirects not followed) for the page a daemon serves."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)
        self.csrf = ""

    def request(self, path: str, data: dict | None = None) -> tuple[int, str, dict]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body)
        try:
            with self.opener.open(req, timeout=60) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def login(self) -> None:
        _, html, _ = self.request("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        status, _, headers = self.request("/login", {"csrf": token, "account": "admin", "password": PASSWORD,
                                                     "next": "/people"})
        assert status == 303 and headers["location"] == "/people"
        _, html, _ = self.request("/people")
        self.csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_the_daemon_logs_decisions_and_seals_unknown_crops_until_purged(tmp_path, clip):
    key_file = tmp_path / "keys" / "store.key"
    key_file.parent.mkdir()
    key_file.write_text(new_key())
    key_file.chmod(0o600)
    cfg = parse(_config(tmp_path, clip, store={"key_file": str(key_file), "path": str(tmp_path / "db" / "s.db")},
                        web={"keep_unknown_crops_h": 1.0}))
    Accounts(tmp_path / "accounts.db").create("admin", PASSWORD)
    daemon = Daemon(cfg, sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    assert daemon.enroll("colin", clip["enrol"].read_bytes(), live_capture=False)["ok"]
    assert daemon.enroll("tony", clip["other"].read_bytes(), live_capture=False)["ok"]  # a runner-up: margins
    with running(daemon) as thread:
        thread.join(60)
        assert not thread.is_alive()
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [e["event"]["decision"] for e in events if e["kind"] == "event"] == ["granted", "unknown"]
    log = DecisionLog(tmp_path / "decisions.db", key=None)  # opened without the key: crops stay sealed
    _, rows = log.query()
    assert [(r["decision"], r["identity"]) for r in reversed(rows)] == [("granted", "colin"), ("unknown", None)]
    granted, unknown = rows[1], rows[0]
    assert granted["score"] >= granted["threshold"] and granted["margin"] is not None
    assert granted["door"] == "front" and granted["latency_ms"] > 0 and granted["liveness"] == "not_checked"
    assert not granted["has_crop"] and unknown["has_crop"]
    assert unknown["candidate"] in ("colin", "tony")  # whom the stranger came closest to
    assert log.crop(unknown["id"]) is None  # sealed: no key, no face
    raw = (tmp_path / "decisions.db").read_bytes()
    assert b"\x89PNG" not in raw  # the face is not in the file in the clear
    from edge.store.crypto import load_key

    sealed = DecisionLog(tmp_path / "decisions.db", key=load_key(key_file))
    png = sealed.crop(unknown["id"])
    assert png is not None and png.startswith(b"\x89PNG")
    assert sealed.purge_crops(1.0, now=time.time() + 3599) == 0  # within its hours: kept
    assert sealed.purge_crops(1.0, now=time.time() + 3601) == 1  # then erased
    assert sealed.crop(unknown["id"]) is None and not sealed.get(unknown["id"])["has_crop"]
    sealed.close()
    log.close()


def test_without_keep_unknown_crops_no_face_is_kept(tmp_path, clip):
    cfg = parse(_config(tmp_path, clip, web={"enabled": False}))
    daemon = Daemon(cfg, sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    assert daemon.web_server is None
    assert daemon.enroll("colin", clip["enrol"].read_bytes(), live_capture=False)["ok"]
    with running(daemon) as thread:
        thread.join(60)
    with DecisionLog(tmp_path / "decisions.db") as log:
        _, rows = log.query()
        assert {r["decision"] for r in rows} == {"granted", "unknown"}
        assert not any(r["has_crop"] for r in rows)


def test_the_door_switch_suspends_face_unlock_in_the_running_daemon(tmp_path, clip):
    door = {"unlock_s": 3, "face_unlock_path": str(tmp_path / "face-unlock.json")}
    cfg = parse(_config(tmp_path, clip, profile="door", door=door,
                        camera={"loop": True, "frames_per_image": 12},
                        liveness={"model": "tests.edge.test_daemon:AlwaysLive", "challenge": False},
                        decision={"cooldown_s": 0.5}))
    Accounts(tmp_path / "accounts.db").create("admin", PASSWORD)
    out = tmp_path / "events.jsonl"
    daemon = Daemon(cfg, sink=LogSink("door1", "front", out))
    assert daemon.enroll("colin", clip["enrol"].read_bytes(), live_capture=False)["ok"]

    def records() -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    with running(daemon):
        assert daemon.web_server.wait_started()
        browser = Browser(daemon.web_server.url)
        browser.login()
        status, html, _ = browser.request("/door")
        assert status == 200 and 'id="suspend"' in html
        assert wait_until(lambda: any(r.get("command") == "UNLOCK" for r in records()), 60)
        # Suspended from the page: the daemon is told through its one method, and says so in its state.
        status, _, headers = browser.request("/door/face-unlock", {"csrf": browser.csrf, "enabled": "off"})
        assert status == 303 and headers["location"] == "/door" and daemon.face_unlock is False
        assert wait_until(lambda: any(r["kind"] == "state" and r["state"].get("face_unlock") is False
                                      for r in records()), 10)
        mark = len(records())
        assert wait_until(lambda: any(r["kind"] == "event" and r["event"]["identity"] == "colin"
                                      for r in records()[mark:]), 60)
        after = records()[mark:]
        colin = [r["event"] for r in after if r["kind"] == "event" and r["event"]["identity"] == "colin"]
        assert colin[0]["decision"] == "denied" and colin[0]["reason"] == "face unlock disabled"
        assert not any(r.get("command") == "UNLOCK" for r in after)
        _, html, _ = browser.request("/door")
        assert 'id="resume"' in html and "suspended" in html
        # And a form without its token changes nothing.
        status, _, _ = browser.request("/door/face-unlock", {"enabled": "on"})
        assert status == 403 and daemon.face_unlock is False
        # Nor does a rebinding page: the same session and token, sent under another name (edge/web/hosts.py).
        import http.client

        where = urllib.parse.urlsplit(daemon.web_server.url)
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        cookie = "; ".join(f"{c.name}={c.value}" for c in browser.jar)
        conn.request("POST", "/door/face-unlock", urllib.parse.urlencode({"csrf": browser.csrf, "enabled": "on"}),
                     {"Host": f"rebind.attacker.example:{where.port}", "Cookie": cookie,
                      "Content-Type": "application/x-www-form-urlencoded"})
        answer = conn.getresponse()
        assert answer.status == 400 and b"web.allowed_hosts" in answer.read() and daemon.face_unlock is False
        conn.close()


def test_decisions_show_on_the_page_and_a_deletion_there_reaches_the_daemon_and_erases_the_log(tmp_path, clip):
    cfg = parse(_config(tmp_path, clip, camera={"loop": True}, decision={"cooldown_s": 0.2}))
    Accounts(tmp_path / "accounts.db").create("admin", PASSWORD)
    daemon = Daemon(cfg, sink=LogSink("door1", "front", tmp_path / "e.jsonl"))
    assert daemon.enroll("colin", clip["enrol"].read_bytes(), live_capture=False)["ok"]
    with running(daemon):
        assert daemon.web_server.wait_started()
        browser = Browser(daemon.web_server.url)
        browser.login()
        log = daemon.decision_log
        assert wait_until(lambda: log.query(person="colin")[0] > 0, 60)
        status, html, _ = browser.request("/decisions?person=colin&outcome=granted")
        assert status == 200 and 'class="d-granted">granted' in html and "/person?name=colin" in html
        status, _, headers = browser.request("/person/delete", {"csrf": browser.csrf, "name": "colin",
                                                                "confirm": "colin"})
        assert status == 303 and headers["location"] == "/audit?deleted=colin"
        assert daemon.engine.identities == 0
        assert log.query(person="colin")[0] == 0
        _, html, _ = browser.request("/audit")
        assert "web: delete by admin" in html
        time.sleep(1.0)  # the loop keeps playing colin's photo: now an unknown face, never him
        assert log.query(person="colin")[0] == 0
        assert all(r["identity"] is None for r in log.query()[1])


def test_run_check_asks_for_an_account_when_the_page_is_enabled(tmp_path, clip):
    from edge.preflight import check

    cfg = parse(_config(tmp_path, clip))
    problems = check(cfg).problems
    assert any("no account in" in p and "facegate web --create-admin NAME" in p for p in problems), problems
    assert not (tmp_path / "accounts.db").exists()  # the check reads, it creates nothing
    Accounts(tmp_path / "accounts.db").create("admin", PASSWORD)
    report = check(cfg)
    assert report.problems == [] and not [w for w in report.warnings if w.startswith("web.")]
    # On a network address, or answering to any host name, the page is exposed: warnings, not refusals.
    exposed = parse(_config(tmp_path, clip, web={"listen": "0.0.0.0:0", "allowed_hosts": ["*"]}))
    report = check(exposed)
    assert report.problems == []
    assert [w.split(":")[0] for w in report.warnings if w.startswith("web.")] == ["web.listen", "web.allowed_hosts"]
