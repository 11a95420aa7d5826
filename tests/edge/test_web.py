"""The admin page over HTTP (Starlette's TestClient; the browser flows are in test_web_browser.py): sessions,
CSRF, the log-in rate limit, enrolment with a preview before anything is stored, bad input answered with a
message and nothing stored, paging in SQL, decisions with kept crops (assign, explain, purge), deletion erasing
the decision log. Real models, real LFW photos, a real SQLite store."""

from __future__ import annotations

import html
import io
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the admin page needs the [web] extra")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx ([dev])")

from starlette.testclient import TestClient

from edge.config import parse
from edge.decide import AccessPolicy
from edge.decision_log import DecisionLog
from edge.enroll import enroll_dir, face_crop_png
from edge.match.factory import make_scorer
from edge.models.registry import Registry
from edge.store.db import Store, TemplateIn
from edge.web.accounts import Accounts, LoginLimiter
from edge.web.app import create_app
from edge.web.services import Services
from edge.web.uploads import check_person_name

PASSWORD = "a long enough password"
EMBEDDER = Registry().default_embedder()  # what the pipeline fixture embeds with (the manifests choose it)
PAGES = ["/people", "/person?name=x", "/enrol", "/identify", "/decisions", "/door", "/audit", "/jobs/x",
         "/decisions/crop?id=1", "/person/crop?name=x&id=1", "/decisions/explain?id=1&name=x"]


@pytest.fixture(scope="module")
def photos(lfw) -> dict[str, Path]:
    root = lfw / "images"
    colin = sorted((root / "Colin_Powell").glob("*.jpg"))
    tony = sorted((root / "Tony_Blair").glob("*.jpg"))
    return {"colin1": colin[0], "colin2": colin[1], "colin3": colin[2], "tony1": tony[0], "tony2": tony[1],
            "stranger": sorted((root / "Aaron_Peirsol").glob("*.jpg"))[0]}


class Site:
    """The app over one scratch store, with a logged-in client."""

    def __init__(self, tmp_path: Path, pipeline, key: bytes | None = None, **web) -> None:
        self.cfg = parse({"profile": "kiosk", "store": {"path": str(tmp_path / "s.db")}, "mqtt": {"enabled": False},
                          "web": {"accounts_path": str(tmp_path / "accounts.db"),
                                  "decisions_path": str(tmp_path / "decisions.db"), "keep_crops": True,
                                  "allowed_hosts": ["testserver"], **web}})
        self.store = Store(tmp_path / "s.db", key=key, keep_crops=True)
        scorer = make_scorer(Registry(), pipeline.embedder.manifest.name, "", self.store, 0.01, "", "mean")
        accounts = Accounts(tmp_path / "accounts.db")
        accounts.create("admin", PASSWORD)
        self.log = DecisionLog(tmp_path / "decisions.db", key=key)
        import threading

        self.services = Services(self.cfg, self.store, Registry(), pipeline, scorer, threading.RLock(), accounts,
                                 self.log)
        self.limiter = LoginLimiter(self.cfg.web.login_attempts, self.cfg.web.login_window_s)
        self.client = TestClient(create_app(self.services, self.limiter), raise_server_exceptions=False,
                                 base_url="https://testserver" if web.get("cookie_secure") else "http://testserver",
                                 follow_redirects=False)
        self.csrf = ""

    def login(self, account: str = "admin", password: str = PASSWORD):
        r = self.client.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
        r = self.client.post("/login", data={"csrf": token, "account": account, "password": password,
                                             "next": "/people"})
        if r.status_code == 303:
            self.csrf = re.search(r'name="csrf" value="([^"]+)"', self.client.get("/people").text).group(1)
        return r

    def upload(self, path: str, name: str, files: list[tuple[str, bytes]], field: str = "photos", **data):
        return self.client.post(path, data={"csrf": self.csrf, "name": name, **data},
                                files=[(field, (fname, blob, "application/octet-stream")) for fname, blob in files])

    def enrol(self, name: str, *paths: Path, **data):
        r = self.upload("/enrol/check", name, [(p.name, p.read_bytes()) for p in paths], **data)
        token = re.search(r'name="token" value="([^"]+)"', r.text)
        if token is None:
            return r, None
        return r, self.client.post("/enrol/commit", data={"csrf": self.csrf, "token": token.group(1)})

    def close(self) -> None:
        self.client.close()
        self.services.close()


@pytest.fixture
def site(tmp_path, pipeline):
    s = Site(tmp_path, pipeline, keep_unknown_crops_h=1.0)
    assert s.login().status_code == 303
    yield s
    s.close()


def _no_trace(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text and "Error:" not in text.replace("error:", "")


# -- sessions, CSRF, rate limit ---------------------------------------------------------------------------------
def test_every_page_needs_a_session_and_json_lists_nothing_without_one(tmp_path, pipeline):
    s = Site(tmp_path, pipeline)
    try:
        for page in PAGES:
            r = s.client.get(page)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), page
        for path in ("/enrol/check", "/person/delete", "/door/face-unlock", "/decisions/assign", "/logout"):
            assert s.client.post(path, data={"csrf": "x"}).status_code == 401, path
        r = s.client.get("/api/people")
        assert r.status_code == 401 and r.json() == {"error": "log in first"}
        assert s.login().status_code == 303
        r = s.client.get("/api/people")
        assert r.status_code == 200 and r.json()["total"] == 0
        cookie = r.request.headers["cookie"]
        assert "facegate_session=" in cookie
    finally:
        s.close()


def test_the_session_cookie_is_httponly_strict_and_logout_ends_it(tmp_path, pipeline):
    s = Site(tmp_path, pipeline, cookie_secure=True)
    try:
        r = s.login()
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie and "path=/" in cookie
        assert s.client.get("/people").status_code == 200
        assert s.client.post("/logout", data={"csrf": s.csrf}).status_code == 303
        assert s.client.get("/people").status_code == 303  # the server forgot the session, not just the browser
    finally:
        s.close()


def test_a_post_without_the_csrf_token_or_from_another_site_is_refused(site, photos):
    site.enrol("colin", photos["colin1"])
    assert site.store.identity("colin") is not None
    for data, headers in (({"name": "colin", "confirm": "colin"}, {}),
                          ({"name": "colin", "confirm": "colin", "csrf": "forged"}, {}),
                          ({"name": "colin", "confirm": "colin", "csrf": site.csrf}, {"origin": "https://evil.example"})):
        r = site.client.post("/person/delete", data=data, headers=headers)
        assert r.status_code == 403 and ("refused" in r.text or "security token" in r.text)
        _no_trace(r.text)
    assert site.store.identity("colin") is not None  # nothing was deleted
    r = site.client.post("/person/delete", data={"name": "colin", "confirm": "colin", "csrf": site.csrf})
    assert r.status_code == 303 and site.store.identity("colin") is None


def test_the_page_answers_only_to_names_it_knows(tmp_path, pipeline, caplog):
    """DNS rebinding: a page elsewhere whose name resolves to the door reaches it with its own name in Host."""
    import logging
    import socket

    s = Site(tmp_path, pipeline, allowed_hosts=["testserver", "door.example.org", ".site.example"])
    caplog.set_level(logging.WARNING, logger="facegate.web")
    try:
        for host in ("testserver", "127.0.0.1:8080", "[::1]:8080", "localhost:8080", "DOOR.example.org",
                     "door.example.org.:443", "site.example", "cam.site.example", socket.gethostname()):
            r = s.client.get("/people", headers={"host": host})
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), host
        for host in ("rebind.attacker.example", "door.example.org.attacker.example", "evilsite.example",
                     "door.example.org:http", "[::1", "", b"127.0.0.1\x1b[2J\xe9"):
            r = s.client.get("/login", headers={"host": host})
            assert r.status_code == 400 and "web.allowed_hosts" in r.text, host
            assert r.headers["x-frame-options"] == "DENY"  # the refusal still carries the security headers
        # A log-in through a rebinding name is refused before any password is checked.
        r = s.client.post("/login", data={"account": "admin", "password": PASSWORD}, headers={"host": "x.example"})
        assert r.status_code == 400 and "set-cookie" not in r.headers
        refused = [r.getMessage() for r in caplog.records if "refused a request for host" in r.getMessage()]
        assert any("rebind.attacker.example" in m for m in refused)
        assert len(refused) == len(set(refused)) and all("\x1b" not in m for m in refused)  # once each, escaped
    finally:
        s.close()
    anywhere = Site(tmp_path / "any", pipeline, allowed_hosts=["*"])
    try:
        assert anywhere.client.get("/login", headers={"host": "rebind.attacker.example"}).status_code == 200
    finally:
        anywhere.close()


def test_the_login_form_has_its_own_token_and_a_rate_limit(tmp_path, pipeline):
    s = Site(tmp_path, pipeline, login_attempts=3)
    try:
        r = s.client.post("/login", data={"account": "admin", "password": PASSWORD, "csrf": "x"})
        assert r.status_code == 403  # no login cookie to match: a cross-site log-in is refused
        for _ in range(3):
            r = s.login(password="wrong password!")
            assert r.status_code == 401 and "wrong account name or password" in r.text
        r = s.login()  # the right password, but the account is locked for the window
        assert r.status_code == 429 and "too many failed log-ins" in r.text
        assert s.client.get("/people").status_code == 303
        s.limiter._failures.clear()  # the window has passed
        assert s.login().status_code == 303
        s.client.cookies.clear()
        r = s.login(account="nobody", password="whatever it is")  # unknown accounts are told apart by nothing
        assert r.status_code == 401 and "wrong account name or password" in r.text
    finally:
        s.close()


def test_log_ins_sent_at_once_are_counted_before_their_passwords_are_checked(tmp_path, pipeline):
    """Counted only after the (slow, scrypt) password check, a burst of guesses all passed the limit while the
    first was being checked. Now an attempt counts from its start: of 12 sent together, 3 are checked."""
    from concurrent.futures import ThreadPoolExecutor

    s = Site(tmp_path, pipeline, login_attempts=3)
    try:
        token = re.search(r'name="csrf" value="([^"]+)"', s.client.get("/login").text).group(1)

        def guess(i: int) -> int:
            return s.client.post("/login", data={"csrf": token, "account": "admin",
                                                 "password": f"wrong guess {i}"}).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = sorted(pool.map(guess, range(12)))
        assert codes == [401] * 3 + [429] * 9, codes
        assert s.login().status_code == 429  # the right password too, for the window
    finally:
        s.close()
    limiter = LoginLimiter(2, 60.0)
    wait, stamp = limiter.begin("account:a", "address:x")
    assert wait == 0 and limiter.begin("account:a", "address:x")[0] == 0
    assert limiter.begin("account:a", "address:y")[0] > 0  # two attempts under way or failed: the third waits
    limiter.succeeded("account:a", stamp, "address:x")  # a right password takes its own attempt back
    assert limiter.begin("account:b", "address:x")[0] == 0


# -- enrolment --------------------------------------------------------------------------------------------------
def test_enrolment_shows_each_photo_with_its_crop_and_verdict_before_storing(site, photos):
    r = site.upload("/enrol/check", "colin", [(photos["colin1"].name, photos["colin1"].read_bytes()),
                                              (photos["tony1"].name, photos["tony1"].read_bytes())])
    assert r.status_code == 200
    verdicts = re.findall(r'class="verdict">([^<]+)<', r.text)
    assert verdicts == ["accepted", "refused"]
    assert "does not match the identity" in r.text
    assert r.text.count('alt="aligned face') == 2  # both faces were found, aligned and shown
    assert site.store.identity("colin") is None  # nothing stored before "enrol"
    token = re.search(r'name="token" value="([^"]+)"', r.text).group(1)
    r = site.client.post("/enrol/commit", data={"csrf": site.csrf, "token": token})
    assert r.status_code == 303 and r.headers["location"] == "/person?name=colin&done=enrolled"
    assert site.store.identity("colin").templates == {EMBEDDER: 1}
    assert site.store.audit()[-1]["command"] == "web: enrol by admin"
    r = site.client.post("/enrol/commit", data={"csrf": site.csrf, "token": token})
    assert r.status_code == 410  # a preview is used once
    page = site.client.get("/person?name=colin")
    assert page.status_code == 200 and "/person/crop?name=colin&amp;id=" in page.text
    crop_url = re.search(r'src="(/person/crop\?[^"]+)"', page.text).group(1).replace("&amp;", "&")
    crop = site.client.get(crop_url)
    assert crop.status_code == 200 and crop.content.startswith(b"\x89PNG")


def test_the_duplicate_guard_is_shown(site, photos):
    site.enrol("colin", photos["colin1"])
    r, _ = site.enrol("impostor", photos["colin2"])
    assert "matches another enrolled identity: 'colin'" in html.unescape(r.text) and 'id="nothing"' in r.text
    assert site.store.identity("impostor") is None
    r, commit = site.enrol("impostor", photos["colin2"], force="1")
    assert "Duplicate and same-person checks skipped" in r.text and commit.status_code == 303
    assert site.store.identity("impostor") is not None


def test_adding_a_photo_to_a_person_must_match_them(site, photos):
    site.enrol("colin", photos["colin1"])
    r, _ = site.enrol("colin", photos["tony1"], add="1")
    assert "does not match the identity: it does not look like 'colin''s enrolled photos" in html.unescape(r.text)
    _, commit = site.enrol("colin", photos["colin2"], add="1")
    assert commit.status_code == 303 and site.store.identity("colin").templates == {EMBEDDER: 2}
    r, _ = site.enrol("nobody", photos["colin3"], add="1")
    assert r.status_code == 400 and "no enrolled identity is named" in r.text


# -- bad input --------------------------------------------------------------------------------------------------
def test_a_corrupt_file_and_a_wrong_type_are_refused_with_a_message(site, photos, tmp_path):
    good = photos["colin1"].read_bytes()
    big = tmp_path / "huge.png"
    cv2.imwrite(str(big), np.zeros((8000, 7000), np.uint8))  # 56 megapixels, a small file
    files = [("truncated.jpg", good[: len(good) // 3]), ("notes.jpg", b"%PDF-1.4 this is not a photo"),
             ("random.png", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))),
             ("huge.png", big.read_bytes())]
    r = site.upload("/enrol/check", "colin", files)
    assert r.status_code == 200
    reasons = re.findall(r"<li>([^<]+)</li>", r.text)
    assert len(reasons) == 4 and all(x.startswith("unreadable image") for x in reasons)
    assert "not a readable image" in r.text and "exceeds the limit of 50000000 pixels" in r.text
    assert 'id="nothing"' in r.text
    _no_trace(r.text)
    assert site.store.identity("colin") is None
    r = site.upload("/identify", "", [("notes.jpg", b"not an image")], field="photo")
    assert r.status_code == 400 and "not a readable image" in r.text
    _no_trace(r.text)


def test_an_upload_over_the_limit_is_refused_and_nothing_is_stored(site, photos):
    blob = photos["colin1"].read_bytes() + b"\0" * (50 * 1024 * 1024)  # a 50 MB "photo"
    r = site.upload("/enrol/check", "colin", [("big.jpg", blob)])
    assert r.status_code == 413 and "larger than the limit of 20 MB: nothing was stored" in r.text
    _no_trace(r.text)
    r = site.upload("/identify", "", [("big.jpg", blob)], field="photo")
    assert r.status_code == 413 and "larger than the limit" in r.text
    assert site.store.identity("colin") is None and site.store.audit() == []


def test_markup_in_a_name_is_refused_and_never_echoed_raw(site, photos):
    evil = '<script>alert("x")</script>'
    r, _ = site.enrol(evil, photos["colin1"])
    assert r.status_code == 400 and "contains characters a name may not hold" in r.text
    assert "<script>" not in r.text and "&lt;script&gt;" in r.text
    assert site.store.identities() == []
    with pytest.raises(Exception, match="may not hold"):
        check_person_name("Ann\x00Lee")
    assert check_person_name("  Seán O'Brien-Ng ") == "Seán O'Brien-Ng"


def test_an_internal_error_shows_no_traceback(site, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("database exploded at /secret/path")

    monkeypatch.setattr(site.store, "people", broken)
    r = site.client.get("/people")
    assert r.status_code == 500 and "internal error" in r.text
    assert "secret" not in r.text and "RuntimeError" not in r.text
    _no_trace(r.text)


# -- bulk -------------------------------------------------------------------------------------------------------
def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_bulk_enrolment_from_a_zip_runs_the_enrol_loop_with_progress(site, photos):
    import time

    archive = _zip({"team/colin/a.jpg": photos["colin1"].read_bytes(),
                    "team/colin/b.jpg": photos["colin2"].read_bytes(),
                    "team/tony/a.jpg": photos["tony1"].read_bytes(), "team/tony/notes.txt": b"ignored",
                    "team/tony/b.jpg": b"broken"})
    r = site.client.post("/enrol/bulk", data={"csrf": site.csrf},
                         files=[("archive", ("team.zip", archive, "application/zip"))])
    assert r.status_code == 303 and r.headers["location"].startswith("/jobs/")
    job_url = r.headers["location"]
    deadline = time.monotonic() + 120
    while True:
        page = site.client.get(job_url)
        if "· done" in page.text or "· failed" in page.text or time.monotonic() > deadline:
            break
        assert 'http-equiv="refresh"' in page.text and "<progress" in page.text
        time.sleep(0.2)
    assert "· done" in page.text and 'http-equiv="refresh"' not in page.text
    assert "4 of 4 images" in page.text and "Enrolled 3 of 4 images as 2 identities" in page.text
    assert "unreadable image" in page.text
    assert {i.name: i.templates[EMBEDDER] for i in site.store.identities()} == {"colin": 2, "tony": 1}
    assert site.store.audit()[-1]["command"] == "web: bulk enrol by admin (team.zip)"


@pytest.mark.parametrize(("entries", "words"), [
    ({"../../etc/evil.jpg": b"x"}, "unsafe path"),
    ({"loose.jpg": b"x"}, "no images in person folders"),
    ({"team/<b>bob</b>/a.jpg": b"x"}, "may not hold"),
])
def test_a_bad_archive_is_refused_before_anything_is_enrolled(site, entries, words):
    r = site.client.post("/enrol/bulk", data={"csrf": site.csrf},
                         files=[("archive", ("x.zip", _zip(entries), "application/zip"))])
    assert r.status_code == 400 and words in r.text
    _no_trace(r.text)
    r = site.client.post("/enrol/bulk", data={"csrf": site.csrf},
                         files=[("archive", ("x.zip", b"PK\x03\x04 not really", "application/zip"))])
    assert r.status_code == 400 and "not a readable zip file" in r.text
    assert site.store.identities() == []


def test_enroll_dir_reports_progress_per_image(tmp_path, pipeline, photos):
    from edge.enroll import Enroller

    root = tmp_path / "people"
    for who, keys in (("colin", ("colin1", "colin2")), ("tony", ("tony1",))):
        (root / who).mkdir(parents=True)
        for k in keys:
            (root / who / photos[k].name).write_bytes(photos[k].read_bytes())
    seen: list[tuple[int, int]] = []
    with Store(tmp_path / "s.db") as store:
        summary = enroll_dir(Enroller(store, pipeline), root, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)] and summary["accepted"] == 3


# -- people, person ---------------------------------------------------------------------------------------------
def test_people_are_paged_and_searched_in_sql(site):
    rng = np.random.default_rng(0)
    m = site.services.pipeline.manifest
    items = {f"person_{i:03d}": [TemplateIn(v / np.linalg.norm(v), m.name, m.sha256, {"inter_eye_px": 40 + i})]
             for i, v in enumerate(rng.standard_normal((120, 128)).astype(np.float32))}
    items["100%_real"] = [TemplateIn(np.eye(128, dtype=np.float32)[0], m.name, m.sha256)]
    site.store.enroll_many(items, command="test")
    total, rows = site.store.people("", 0, 50)
    assert total == 121 and len(rows) == 50 and rows[0]["name"] == "100%_real"
    assert site.store.people("", 100, 50)[1][-1]["name"] == "person_119"
    assert [r["name"] for r in site.store.people("person_01", 0, 50)[1]] == [f"person_01{i}" for i in range(10)]
    assert site.store.people("%_", 0, 50)[0] == 1 and site.store.people("_11", 0, 50)[0] == 10  # literal % and _
    assert site.store.people("ERSON_11", 0, 50)[0] == 10  # case-blind
    r = site.client.get("/people?page=3")
    assert r.text.count("/person?name=") == 21 and "page 3 of 3" in r.text
    r = site.client.get("/people?q=person_11")
    assert "10" in r.text and r.text.count("/person?name=") == 10
    assert "eyes 150 px" in site.client.get("/people?q=person_110").text
    data = site.client.get("/api/people?q=person_11&page=1").json()
    assert data["total"] == 10 and "vector" not in str(data)
    # Numbers that str.isdigit() takes but int() does not ("²"), or past SQLite's integers: the first page, a 404.
    for path in ("/people?page=%C2%B2", "/audit?page=%C2%B2", "/decisions?page=%C2%B2", "/api/people?page=%C2%B2"):
        assert site.client.get(path).status_code == 200, path
    for path in ("/person/crop?name=person_1&id=%C2%B2", "/decisions/crop?id=99999999999999999999999",
                 "/decisions/explain?id=%C2%B2&name=person_1"):
        r = site.client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        _no_trace(r.text)


def test_the_validity_window_set_on_the_page_is_what_the_daemon_applies(site, photos):
    import datetime as dt

    site.enrol("colin", photos["colin1"])
    policy = AccessPolicy(site.cfg.access, metadata=lambda n: site.store.identity(n).metadata)
    assert policy.allowed("colin")[0]
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    r = site.client.post("/person/validity", data={"csrf": site.csrf, "name": "colin", "valid_until": yesterday,
                                                   "windows": "mon-sun 00:00-24:00", "display_name": "Colin P."})
    assert r.status_code == 303
    ok, why = policy.allowed("colin")
    assert not ok and why == f"not valid after {yesterday}"
    ident = site.store.identity("colin")
    assert ident.display_name == "Colin P." and ident.metadata["access"] == ["mon-sun 00:00-24:00"]
    assert site.store.audit()[-1]["action"] == "update"
    for data, words in (({"valid_from": "next tuesday"}, "is not a date"),
                        ({"windows": "weekdays 9-5"}, "time window"),
                        ({"valid_from": "2030-01-02", "valid_until": "2030-01-01"}, "ends before it starts"),
                        ({"display_name": "Colin\u202egnp.exe"}, "contains characters a name may not hold"),
                        ({"display_name": "Colin\x85 P."}, "contains characters a name may not hold")):
        r = site.client.post("/person/validity", data={"csrf": site.csrf, "name": "colin", **data})
        assert r.status_code == 400 and words in r.text
    assert site.store.identity("colin").metadata["valid_until"] == yesterday  # unchanged by the refusals


def test_deletion_asks_for_the_name_erases_the_log_and_is_audited(site, photos):
    site.enrol("colin", photos["colin1"])
    site.log.add({"decision": "granted", "identity": "colin", "score": 0.8, "threshold": 0.4, "event_id": "e1"})
    site.log.add({"decision": "unknown", "identity": None, "event_id": "e2"}, candidate="colin")
    r = site.client.get("/person/delete?name=colin")
    assert r.status_code == 200 and "Type the name to confirm" in r.text
    r = site.client.post("/person/delete", data={"csrf": site.csrf, "name": "colin", "confirm": "Colin"})
    assert r.status_code == 400 and "nothing was deleted" in r.text and site.store.identity("colin") is not None
    r = site.client.post("/person/delete", data={"csrf": site.csrf, "name": "colin", "confirm": "colin"})
    assert r.status_code == 303 and r.headers["location"] == "/audit?deleted=colin"
    assert site.store.identity("colin") is None
    _, rows = site.log.query()
    assert [r["decision"] for r in rows] == ["unknown"] and rows[0]["candidate"] is None
    page = site.client.get("/audit?deleted=colin").text
    assert "Deleted colin" in page and 'class="a-delete">delete' in page and "web: delete by admin" in page


# -- decisions --------------------------------------------------------------------------------------------------
def _stranger_crop(pipeline, path: Path) -> bytes:
    from edge.imageio import load_bgr
    from edge.vision.detect import select_face

    image = load_bgr(path)
    return face_crop_png(image, select_face(pipeline.detect(image), image.shape, "largest"))


def test_decisions_filter_and_an_unknown_face_is_assigned_to_a_person(site, photos, pipeline):
    site.enrol("tony", photos["tony1"])
    crop = _stranger_crop(pipeline, photos["colin2"])
    site.log.add({"decision": "granted", "identity": "tony", "score": 0.7, "threshold": 0.41, "door": "back",
                  "latency_ms": 30.0, "liveness": {"verdict": "live", "score": 0.93}, "event_id": "a"}, margin=0.4)
    row = site.log.add({"decision": "unknown", "identity": None, "score": 0.1, "threshold": 0.41, "door": "front",
                        "event_id": "b"}, candidate="tony", crop=crop)
    page = site.client.get("/decisions")
    assert page.status_code == 200 and page.text.count("<tr>") == 3
    assert "live 0.93" in page.text and "0.400" in page.text and "closest: tony" in page.text
    assert site.client.get("/decisions?outcome=granted&door=back").text.count("<tr>") == 2
    assert site.client.get("/decisions?person=tony").text.count("<tr>") == 2
    assert "No decisions match" in site.client.get("/decisions?door=side").text
    assert site.client.get(f"/decisions/crop?id={row}").content == crop
    r = site.client.post("/decisions/assign", data={"csrf": site.csrf, "id": str(row), "name": "tony"})
    assert r.status_code == 409 and "does not match the identity" in r.text  # Colin's face is not Tony
    r = site.client.post("/decisions/assign", data={"csrf": site.csrf, "id": str(row), "name": "<b>x</b>"})
    assert r.status_code == 400 and "may not hold" in r.text
    r = site.client.post("/decisions/assign", data={"csrf": site.csrf, "id": str(row), "name": "colin"})
    assert r.status_code == 303 and r.headers["location"] == "/person?name=colin&done=assigned"
    assert site.store.identity("colin").templates == {EMBEDDER: 1}
    assert site.log.crop(row) is None and site.log.get(row)["assigned"] == "colin"
    assert site.store.audit()[-1]["command"] == f"web: assign decision {row} by admin"
    assert site.client.get(f"/decisions/crop?id={row}").status_code == 404


def test_kept_crops_are_purged_on_view_when_their_hours_are_over(tmp_path, pipeline, photos):
    s = Site(tmp_path, pipeline, keep_unknown_crops_h=1.0)
    try:
        s.login()
        crop = _stranger_crop(pipeline, photos["stranger"])
        import time

        old = s.log.add({"decision": "unknown", "event_id": "o"}, crop=crop, ts=time.time() - 7200)
        new = s.log.add({"decision": "unknown", "event_id": "n"}, crop=crop)
        page = s.client.get("/decisions").text
        assert f"/decisions/crop?id={new}" in page and f"/decisions/crop?id={old}" not in page
        assert s.log.crop(old) is None and s.log.crop(new) == crop
    finally:
        s.close()


def test_a_kept_crop_is_explained_against_a_person(site, photos, pipeline):
    site.enrol("colin", photos["colin1"])
    row = site.log.add({"decision": "unknown", "event_id": "x"}, candidate="colin",
                       crop=_stranger_crop(pipeline, photos["colin2"]))
    page = site.client.get("/decisions").text
    assert f'href="/decisions/explain?id={row}&amp;name=colin"' in page
    r = site.client.get(f"/decisions/explain?id={row}&name=colin")
    assert r.status_code == 200 and 'id="map"' in r.text and "src=\"data:image/png;base64," in r.text
    assert "match" in r.text and "kept crop" in r.text
    r = site.client.get(f"/decisions/explain?id={row}&name=nobody")
    assert r.status_code == 404 and "no enrolled identity is named" in r.text


def test_the_door_page_without_a_daemon_says_where_the_switch_works(site):
    r = site.client.get("/door")
    assert r.status_code == 200 and "unknown model" not in r.text
    models = re.search(r"<h2>Models</h2>(.*?)</table>", r.text, re.S).group(1)
    assert f"<td>{EMBEDDER}</td>" in models and "<td>yunet</td>" in models
    assert "runs on its own" in r.text and "no daemon answered" in r.text
    r = site.client.post("/door/face-unlock", data={"csrf": site.csrf, "enabled": "off"})
    assert r.status_code == 409 and "only when the page runs inside it" in r.text


def test_security_headers_on_every_response(site):
    for path in ("/people", "/login", "/static/style.css", "/nope"):
        h = site.client.get(path).headers
        assert "script-src" not in h["content-security-policy"] and "default-src 'none'" in h["content-security-policy"]
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
        assert "app;dur=" in h["server-timing"]
    assert site.client.get("/people").headers["cache-control"] == "no-store"
    assert site.client.get("/nope").status_code == 404
