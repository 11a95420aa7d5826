"""Warnings of `facegate run --check` that need no running parts."""

from edge.preflight import _plain_http_hub


def test_a_plain_http_hub_off_this_machine_is_a_warning():
    assert _plain_http_hub("https://hub.example:8710") == []
    assert _plain_http_hub("http://127.0.0.1:8710") == []  # the hub on the same box (tests, a one-door site)
    [warning] = _plain_http_hub("http://hub.example:8710")
    assert warning.startswith("fleet.hub_url: http://hub.example:8710 is plain HTTP") and "https://" in warning
