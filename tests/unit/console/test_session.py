"""Console sessions: a cookie signed with a key from the admin token, and form values
bound to the session."""

from __future__ import annotations

from feedhook.console.session import MAX_AGE, Sessions

NOW = 1_800_000_000.0


def test_a_session_is_accepted_until_it_is_old() -> None:
    sessions = Sessions("token")
    cookie = sessions.issue(NOW)
    assert sessions.verify(cookie, NOW + 10) is not None
    assert sessions.verify(cookie, NOW + MAX_AGE + 1) is None
    assert sessions.verify(cookie, NOW - 3600) is None  # issued in the future: forged


def test_a_forged_or_foreign_cookie_is_refused() -> None:
    sessions = Sessions("token")
    cookie = sessions.issue(NOW)
    issued, nonce, mac = cookie.split(".")
    assert sessions.verify(f"{issued}.{nonce}x.{mac}", NOW) is None
    assert sessions.verify(f"{int(NOW) + 1}.{nonce}.{mac}", NOW + 2) is None
    assert sessions.verify(f"{issued}.{nonce}.{'0' * 64}", NOW) is None
    assert Sessions("another token").verify(cookie, NOW) is None  # the token changed
    for junk in ("", "a.b", "a.b.c.d", "x.y.z", None):
        assert sessions.verify(junk, NOW) is None


def test_the_form_value_belongs_to_its_session() -> None:
    sessions = Sessions("token")
    one = sessions.verify(sessions.issue(NOW), NOW)
    two = sessions.verify(sessions.issue(NOW), NOW)
    assert one is not None and two is not None and one != two
    assert sessions.csrf_ok(one, sessions.csrf(one))
    assert not sessions.csrf_ok(one, sessions.csrf(two))
    assert not sessions.csrf_ok(one, "")
    assert not sessions.csrf_ok(one, "\udcff")


def test_the_token_is_compared_whole() -> None:
    sessions = Sessions("token")
    assert sessions.token_ok("token")
    assert not sessions.token_ok("toke") and not sessions.token_ok("token ")
    assert not sessions.token_ok("\udcff")
