"""The daemon's TOML configuration: defaults, the example file, and refusals that name the key (exit 2)."""

import datetime as dt
import tomllib
from pathlib import Path

import pytest

from edge import config
from edge.cli import main
from edge.config import Config, ConfigError, parse, parse_window

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "facegate.example.toml"


def test_defaults_need_no_file(monkeypatch):
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    cfg = config.load(None)
    assert cfg == Config() and cfg.profile == "door" and cfg.mqtt.host == "127.0.0.1"


def test_configuration_directory_is_read(monkeypatch, tmp_path):
    (tmp_path / "facegate.toml").write_text('profile = "kiosk"\n')
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", str(tmp_path))
    assert config.load(None).profile == "kiosk"


def test_example_documents_every_key_with_its_default():
    assert config.load(EXAMPLE) == Config()
    written = tomllib.loads(EXAMPLE.read_text())
    for section, values in config.defaults().items():
        if isinstance(values, dict):
            assert set(written[section]) == set(values), section
        else:
            assert section in written


@pytest.mark.parametrize(("toml", "key", "words"), [
    ("[camera]\nfsp = 15\n", "camera.fsp", "unknown key"),
    ("[cammera]\nfps = 15\n", "cammera", "unknown key"),
    ("[decision]\nk = \"three\"\n", "decision.k", "integer"),
    ("[decision]\nk = 2.5\n", "decision.k", "integer"),
    ("[camera]\nloop = \"yes\"\n", "camera.loop", "true or false"),
    ("profile = \"office\"\n", "profile", "door, kiosk"),
    ("[decision]\nfpir = 2\n", "decision.fpir", "out of range"),
    ("[decision]\nk = 6\nn = 5\n", "decision.k", "larger than decision.n"),
    ("[access.windows]\nalice = [\"weekdays 9-5\"]\n", "access.windows.alice[0]", "time window"),
    ("[access]\ntimezone = \"Mars/Olympus\"\n", "access.timezone", "unknown time zone"),
    ("[health]\nlisten = \"9108\"\n", "health.listen", "HOST:PORT"),
    ("profile = \"kiosk\"\n[liveness]\nmodel = \"minifasnet\"\n", "liveness.model", "kiosk"),
    ("camera = 3\n", "camera", "expected a table"),
    ("[quality]\nmin_inter_eye_px = -100\n", "quality.min_inter_eye_px", "out of range"),
    ("[quality]\nmax_yaw_deg = -1\n", "quality.max_yaw_deg", "out of range"),
    ("[quality]\nmin_score = 1.5\n", "quality.min_score", "out of range"),
    ("[quality]\nmin_brightness = 200\nmax_brightness = 100\n", "quality.max_brightness", "smaller than"),
])
def test_a_wrong_key_or_value_names_the_key(tmp_path, capsys, toml, key, words):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert f"{key}:" in str(err.value) and words in str(err.value)
    assert main(["run", "--config", str(path), "--check"]) == 2
    assert key in capsys.readouterr().err


def test_unreadable_or_invalid_toml_exits_2(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "x.toml").write_text("profile = \n")
    assert main(["run", "--config", str(tmp_path / "x.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_check_accepts_a_good_file(tmp_path, capsys):
    """A file whose parts all exist here (the check builds them: store, camera folder, models)."""
    path = tmp_path / "ok.toml"
    (tmp_path / "frames").mkdir()
    path.write_text(f'profile = "kiosk"\n[decision]\nk = 2\nn = 4\ncooldown_s = 3\n[camera]\n'
                    f'source = "{tmp_path / "frames"}"\n[store]\npath = "{tmp_path / "s.db"}"\ncreate = true\n'
                    f'[health]\nlisten = "127.0.0.1:0"\n')
    assert main(["run", "--config", str(path), "--check"]) == 0
    assert "ok (profile kiosk)" in capsys.readouterr().out
    cfg = config.load(path)
    assert cfg.decision.cooldown_s == 3.0 and isinstance(cfg.decision.cooldown_s, float)


def test_door_profile_without_a_liveness_model_refuses_to_start(tmp_path, capsys):
    path = tmp_path / "door.toml"
    path.write_text(f'profile = "door"\n[store]\npath = "{tmp_path / "s.db"}"\n[mqtt]\nenabled = false\n')
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "requires liveness" in err and "facegate models install minifasnet`" in err and "kiosk" in err


def test_time_windows():
    days, start, end = parse_window("Mon-Fri 08:00-18:00")
    assert days == frozenset(range(5)) and (start, end) == (480, 1080)
    assert parse_window("sat,sun 10:00-14:00")[0] == frozenset({5, 6})
    assert parse_window("fri-mon 22:00-06:00")[0] == frozenset({4, 5, 6, 0})
    assert parse_window("daily 00:00-24:00")[1:] == (0, 1440)
    for bad in ("mon 25:00-26:00", "someday 08:00-09:00", "mon 8-9"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_access_windows_and_metadata():
    from edge.decide import AccessPolicy

    cfg = parse({"access": {"default": "deny", "windows": {"alice": ["mon-fri 08:00-18:00"],
                                                             "guard": ["daily 22:00-06:00"], "nobody": []}}})
    meta = {"bob": {"access": ["sat 09:00-12:00"]}, "eve": {"access": "always"}}
    policy = AccessPolicy(cfg.access, metadata=meta.get)
    monday_noon, saturday_10, sunday_3 = dt.datetime(2026, 3, 2, 12), dt.datetime(2026, 3, 7, 10), \
        dt.datetime(2026, 3, 8, 3)
    assert policy.allowed("alice", monday_noon)[0] and not policy.allowed("alice", saturday_10)[0]
    assert policy.allowed("guard", sunday_3)[0]  # Saturday's window runs past midnight
    assert not policy.allowed("guard", monday_noon)[0]
    assert not policy.allowed("nobody", monday_noon)[0]
    assert policy.allowed("bob", saturday_10)[0] and not policy.allowed("bob", monday_noon)[0]
    ok, why = policy.allowed("eve", monday_noon)
    assert not ok and "malformed" in why  # a bad window in metadata denies: fail-secure
    assert not policy.allowed("carol", monday_noon)[0]  # default deny


def test_secrets_from_systemd_credentials(monkeypatch, tmp_path):

    (tmp_path / config.CREDENTIAL_MQTT_PASSWORD).write_text("s3cret\n")
    (tmp_path / config.CREDENTIAL_COMMAND_SECRET).write_text("0123456789abcdef0123\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    values = parse({"mqtt": {"username": "door", "device": "door1"}}).mqtt.resolved()
    assert values.password == "s3cret" and values.command_secret == "0123456789abcdef0123"
    assert values.tls_ca == "" and values.device == "door1"
    # A file named in the config wins over the credential.
    (tmp_path / "pw").write_text("from-file")
    cfg = parse({"mqtt": {"username": "u", "password_file": str(tmp_path / "pw")}})
    assert cfg.mqtt.resolved().password == "from-file"
