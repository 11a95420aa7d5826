"""The admin page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium; nothing
is downloaded), served by a real daemon (`facegate run` with `[web] enabled`) that plays LFW photos as its
camera. The account is created by the real command (`facegate web --create-admin`, password on stdin).

Flows, in order: log in; enrol a person from two LFW photos where one is refused with a visible reason; bulk
enrol a zip with a progress bar; find the person on the people page; identify an upload; see the door's
decisions (an unknown visitor's face kept, explained); suspend and resume face unlock; refuse bad input with
a message (a corrupt file, a 50 MB upload, markup in a name); delete the person and see the audit row; a
POST without the CSRF token and a GET without a session are refused.

Screenshots of each page go to $FACEGATE_WEB_SCREENSHOTS when set (docs/web/ holds the README's), else to a
temporary folder. Skipped, with the reason, where Chromium or its driver is not installed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the admin page needs the [web] extra")
pytest.importorskip("selenium", reason="selenium is not installed ([dev] extra)")

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from edge.cli import main
from edge.config import load
from edge.daemon import Daemon
from edge.demo_daemon import running
from edge.models.registry import Registry
from edge.sinks.log import LogSink

PASSWORD = "correct horse battery staple"
EMBEDDER = Registry().default_embedder()  # what the daemon embeds with (the manifests choose it)
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and Path(p).is_file()), None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file()
                                                 else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="Chromium and chromedriver are not installed (Debian: apt-get install "
                                       "chromium chromium-driver; .ci/run installs them)")


@pytest.fixture(scope="module")
def photos(lfw) -> dict[str, Path]:
    root = lfw / "images"

    def first(name: str, n: int) -> list[Path]:
        return sorted((root / name).glob("*.jpg"))[:n]

    colin = first("Colin_Powell", 5)
    return {"colin": colin, "tony": first("Tony_Blair", 2)[0], "stranger": first("Aaron_Peirsol", 1)[0],
            "bulk": {name.lower(): first(name, 2)
                     for name in ("George_W_Bush", "Gerhard_Schroeder", "Donald_Rumsfeld", "Ariel_Sharon")}}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("FACEGATE_WEB_SCREENSHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def door(photos, tmp_path_factory):
    """A daemon serving the page: its camera plays Colin (not yet enrolled), nobody, then a stranger, looped."""
    root = tmp_path_factory.mktemp("webdoor")
    clip = root / "clip"
    clip.mkdir()
    shutil.copy(photos["colin"][4], clip / "01_colin.jpg")  # [3] turns his head too far for the gate
    cv2.imwrite(str(clip / "02_empty.png"), np.full((250, 250, 3), 120, np.uint8))
    shutil.copy(photos["stranger"], clip / "03_stranger.jpg")
    conf = root / "facegate.toml"
    # The door profile (its face-unlock switch is on the door page); liveness is a stand-in that passes every
    # face: these tests are about the page, and the liveness models have their own tests.
    conf.write_text(f"""profile = "door"
[liveness]
model = "tests.edge.test_daemon:AlwaysLive"
challenge = false
[door]
face_unlock_path = "{root / 'face-unlock.json'}"
[camera]
source = "{clip}"
fps = 6.0
frames_per_image = 12
loop = true
[store]
path = "{root / 'store' / 'people.db'}"
create = true
[mqtt]
enabled = false
door = "front"
[health]
listen = "127.0.0.1:0"
[decision]
cooldown_s = 3.0
[web]
enabled = true
listen = "127.0.0.1:0"
accounts_path = "{root / 'accounts.db'}"
decisions_path = "{root / 'decisions.db'}"
keep_unknown_crops_h = 1.0
keep_crops = true
""")
    # The account, through the real command: the password on standard input.
    old = sys.stdin
    sys.stdin = io.StringIO(PASSWORD + "\n")
    try:
        assert main(["web", "--config", str(conf), "--create-admin", "admin", "--no-serve", "--json"]) == 0
    finally:
        sys.stdin = old
    daemon = Daemon(load(conf), sink=LogSink("door1", "front", root / "events.jsonl"))
    with running(daemon):
        assert daemon.web_server.wait_started()
        yield {"daemon": daemon, "url": daemon.web_server.url, "root": root}


@pytest.fixture(scope="module")
def browser(door):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never fetch a browser or driver
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(180)
    try:
        yield driver
    finally:
        driver.quit()


def _go(driver, door, path: str) -> None:
    driver.get(door["url"] + path)


def _shot(driver, shots: Path, name: str) -> Path:
    """A full-page screenshot: the viewport is set to the page's height for the moment of the capture."""
    height = int(driver.execute_script("return Math.max(document.documentElement.scrollHeight, 600)"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": min(height, 4000),
                                                                  "deviceScaleFactor": 1, "mobile": False})
    path = shots / f"{name}.png"
    try:
        assert driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
    return path


def _text(driver, css: str) -> str:
    el = driver.find_element(By.CSS_SELECTOR, css)
    assert el.is_displayed(), css
    return el.text


def _submit(driver, button_id: str, timeout: float = 180) -> None:
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, button_id).click()
    WebDriverWait(driver, timeout).until(lambda d: old.id != d.find_element(By.TAG_NAME, "html").id)


def _no_trace(driver) -> None:
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in body and 'File "' not in body


def test_log_in(browser, door, shots):
    _go(browser, door, "/people")
    assert browser.current_url.startswith(door["url"] + "/login?next=")  # not logged in: the log-in page
    _shot(browser, shots, "login")
    browser.find_element(By.ID, "account").send_keys("admin")
    browser.find_element(By.ID, "password").send_keys("not the password")
    _submit(browser, "login")
    assert "wrong account name or password" in _text(browser, "#error")
    browser.find_element(By.ID, "account").send_keys("admin")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    _submit(browser, "login")
    assert browser.current_url == door["url"] + "/people"
    assert "admin" in _text(browser, ".who")


def test_enrol_two_photos_one_refused_with_a_visible_reason(browser, door, shots, photos):
    _go(browser, door, "/enrol")
    browser.find_element(By.ID, "name").send_keys("colin")
    browser.find_element(By.ID, "photos").send_keys(f"{photos['colin'][0]}\n{photos['tony']}")
    _submit(browser, "check")
    verdicts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".card .verdict")]
    assert verdicts == ["ACCEPTED", "REFUSED"]  # shown upper-case by the style sheet
    reason = _text(browser, ".card.refused .reasons li")
    assert reason.startswith("does not match the identity") and "score" in reason
    assert len(browser.find_elements(By.CSS_SELECTOR, "img[alt^='aligned face']")) == 2
    assert door["daemon"].store.identity("colin") is None  # nothing stored yet
    _shot(browser, shots, "enrol")
    _submit(browser, "commit")
    assert browser.current_url.endswith("/person?name=colin&done=enrolled")
    assert _text(browser, "#person-name") == "colin"
    assert door["daemon"].store.identity("colin").templates == {EMBEDDER: 1}
    # a second photo, added from the person page
    browser.find_element(By.ID, "add-photos").send_keys(str(photos["colin"][1]))
    _submit(browser, "add-check")
    _submit(browser, "commit")
    assert door["daemon"].store.identity("colin").templates == {EMBEDDER: 2}
    _shot(browser, shots, "person")


def test_bulk_enrolment_of_a_zip_with_a_progress_bar(browser, door, shots, photos, tmp_path):
    archive = tmp_path / "staff.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for who, files in photos["bulk"].items():
            for f in files:
                z.write(f, f"staff/{who}/{f.name}")
    _go(browser, door, "/enrol")
    browser.find_element(By.ID, "archive").send_keys(str(archive))
    _submit(browser, "bulk")
    assert "/jobs/" in browser.current_url
    assert browser.find_elements(By.ID, "progress")
    # The job page reloads itself each second: an element found just before a reload is stale when read.
    WebDriverWait(browser, 300, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)).until(
        lambda d: "· done" in d.find_element(By.ID, "progress-text").text)
    summary = _text(browser, "#summary")
    assert re.search(r"Enrolled \d+ of 8 images as \d+ identities", summary)
    _shot(browser, shots, "bulk")


def test_find_the_person_on_the_people_page(browser, door, shots):
    _go(browser, door, "/people")
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#people tbody td:first-child a")]
    assert "colin" in names and len(names) >= 4
    _shot(browser, shots, "people")
    browser.find_element(By.ID, "q").send_keys("coli")
    _submit(browser, "search")
    rows = browser.find_elements(By.CSS_SELECTOR, "#people tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "a").text for r in rows] == ["colin"]
    assert "2" in rows[0].text  # two photos


def test_identify_an_upload(browser, door, shots, photos):
    _go(browser, door, "/identify")
    browser.find_element(By.ID, "photo").send_keys(str(photos["colin"][2]))
    _submit(browser, "identify")
    assert _text(browser, "#answer") == "Recognised: colin"
    _shot(browser, shots, "identify")


def test_the_door_decisions_with_an_unknown_face_kept_and_explained(browser, door, shots):
    log = door["daemon"].decision_log
    # The camera keeps playing: Colin is now granted, the stranger stays unknown (face kept, closest candidate).
    assert _wait(lambda: log.query(person="colin", outcome="granted")[0] > 0, 120)
    assert _wait(lambda: any(r["has_crop"] and r["candidate"] for r in log.query(outcome="unknown")[1]), 120)
    _go(browser, door, "/decisions")
    assert browser.find_elements(By.CSS_SELECTOR, "td.d-granted") and browser.find_elements(By.CSS_SELECTOR,
                                                                                            "td.d-unknown")
    _shot(browser, shots, "decisions")
    _go(browser, door, "/decisions?outcome=granted&person=colin")
    assert {e.text for e in browser.find_elements(By.CSS_SELECTOR, "#decisions td:nth-child(2)")} == {"granted"}
    _go(browser, door, "/decisions?outcome=unknown")
    link = next(e for e in browser.find_elements(By.CSS_SELECTOR, "a[id^='explain-']"))
    old = browser.find_element(By.TAG_NAME, "html")
    link.click()
    WebDriverWait(browser, 240).until(lambda d: old.id != d.find_element(By.TAG_NAME, "html").id)
    assert browser.find_element(By.ID, "map").is_displayed()
    _shot(browser, shots, "explain")


def test_suspend_and_resume_face_unlock_on_the_door_page(browser, door, shots):
    _go(browser, door, "/door")
    assert "on:" in _text(browser, "#face-unlock") and "healthy" in _text(browser, "#healthy")
    _shot(browser, shots, "door")
    _submit(browser, "suspend")
    assert "suspended" in _text(browser, "#face-unlock") and door["daemon"].face_unlock is False
    _submit(browser, "resume")
    assert "on:" in _text(browser, "#face-unlock") and door["daemon"].face_unlock is True


def test_bad_input_gets_a_message_on_the_page_and_nothing_is_stored(browser, door, shots, photos, tmp_path):
    store = door["daemon"].store
    before = len(store.audit())
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(photos["colin"][0].read_bytes()[:3000])
    notes = tmp_path / "notes.png"
    notes.write_text("a text file with an image's name")
    _go(browser, door, "/enrol")
    browser.find_element(By.ID, "name").send_keys("zoe")
    browser.find_element(By.ID, "photos").send_keys(f"{corrupt}\n{notes}")
    _submit(browser, "check")
    reasons = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".reasons li")]
    assert len(reasons) == 2 and all("not a readable image" in r for r in reasons)
    assert browser.find_element(By.ID, "nothing").is_displayed()
    _no_trace(browser)
    big = tmp_path / "big.jpg"
    big.write_bytes(photos["colin"][0].read_bytes() + b"\0" * (50 * 1024 * 1024))
    _go(browser, door, "/enrol")
    browser.find_element(By.ID, "name").send_keys("zoe")
    browser.find_element(By.ID, "photos").send_keys(str(big))
    _submit(browser, "check")
    assert "larger than the limit of 20 MB: nothing was stored" in _text(browser, "#error")
    _no_trace(browser)
    _go(browser, door, "/enrol")
    browser.find_element(By.ID, "name").send_keys("<img src=x onerror=alert(1)>")
    browser.find_element(By.ID, "photos").send_keys(str(photos["colin"][0]))
    _submit(browser, "check")
    assert "contains characters a name may not hold" in _text(browser, "#error")
    assert not browser.find_elements(By.CSS_SELECTOR, "main img[src='x']")  # shown as text, never as markup
    _shot(browser, shots, "refused")
    assert store.identity("zoe") is None and len(store.audit()) == before


def test_delete_the_person_and_see_the_audit_row(browser, door, shots):
    _go(browser, door, "/person?name=colin")
    _submit(browser, "delete")
    browser.find_element(By.ID, "confirm").send_keys("colin")
    _submit(browser, "confirm-delete")
    assert browser.current_url.endswith("/audit?deleted=colin")
    first = browser.find_element(By.CSS_SELECTOR, "#audit tbody tr")
    assert "delete" in first.text and "colin" in first.text and "web: delete by admin" in first.text
    assert door["daemon"].store.identity("colin") is None
    assert door["daemon"].decision_log.query(person="colin")[0] == 0  # erased from the decision log too
    _shot(browser, shots, "audit")


def test_a_post_without_the_csrf_token_and_a_get_without_a_session_are_refused(browser, door, photos):
    cookie = browser.get_cookie("facegate_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    session = f"facegate_session={cookie['value']}"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def call(path: str, data: dict | None = None, headers: dict | None = None) -> tuple[int, str, dict]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(door["url"] + path, data=body, headers=headers or {})
        try:
            with opener.open(req, timeout=30) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    # The session works (a page loads)…
    assert call("/people", headers={"Cookie": session})[0] == 200
    # … but a POST with it and no CSRF token (what a forged cross-site form sends) changes nothing.
    name = next(iter(photos["bulk"]))
    status, body, _ = call("/person/delete", {"name": name, "confirm": name}, {"Cookie": session})
    assert status == 403 and "security token" in body
    assert door["daemon"].store.identity(name) is not None
    # Without a session: every page sends to the log-in, JSON lists nothing.
    status, _, headers = call("/people")
    assert status == 303 and headers["location"].startswith("/login")
    status, body, _ = call("/api/people")
    assert status == 401 and json.loads(body) == {"error": "log in first"}
    browser.delete_all_cookies()
    _go(browser, door, "/decisions")
    assert "/login" in browser.current_url and browser.find_element(By.ID, "login").is_displayed()


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False
