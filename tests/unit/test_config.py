import base64

import pytest

from app.config import Config, ConfigError, env_bool, env_int

KEY = base64.b64encode(b"k" * 32).decode()
SESSION = "s" * 40


def test_missing_master_key_stops_the_start_and_says_how_to_make_one():
    with pytest.raises(ConfigError, match="nullops keys generate"):
        Config({"NULLOPS_SESSION_SECRET": SESSION})


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode(),
                                 base64.b64encode(b"k" * 33).decode()])
def test_malformed_master_key_is_refused(bad):
    with pytest.raises(ConfigError, match="exactly 32 random bytes"):
        Config({"NULLOPS_SESSION_SECRET": SESSION, "NULLOPS_SECRET_KEY": bad})


def test_missing_or_short_session_secret_is_refused():
    with pytest.raises(ConfigError, match="NULLOPS_SESSION_SECRET"):
        Config({"NULLOPS_SECRET_KEY": KEY})
    with pytest.raises(ConfigError, match="NULLOPS_SESSION_SECRET"):
        Config({"NULLOPS_SECRET_KEY": KEY, "NULLOPS_SESSION_SECRET": "short"})


def test_defaults_are_safe():
    config = Config({"NULLOPS_SECRET_KEY": KEY, "NULLOPS_SESSION_SECRET": SESSION})
    assert config.SESSION_COOKIE_SECURE and config.SESSION_COOKIE_HTTPONLY
    assert config.SESSION_COOKIE_SAMESITE == "Lax"
    assert config.SQLALCHEMY_DATABASE_URI.startswith("sqlite:///")
    assert config.NULLOPS_MASTER_KEY == b"k" * 32


def test_old_keys_are_parsed_for_rotation():
    old = base64.b64encode(b"o" * 32).decode()
    config = Config({"NULLOPS_SECRET_KEY": KEY, "NULLOPS_SESSION_SECRET": SESSION,
                     "NULLOPS_OLD_SECRET_KEYS": f" {old} ,"})
    assert config.NULLOPS_OLD_MASTER_KEYS == [b"o" * 32]


def test_typed_helpers_name_the_variable():
    assert env_bool("X", False, {"X": "yes"}) is True
    with pytest.raises(ConfigError, match="X='maybe' is not a boolean"):
        env_bool("X", False, {"X": "maybe"})
    with pytest.raises(ConfigError, match="Y='ten' is not an integer"):
        env_int("Y", 1, {"Y": "ten"})
    with pytest.raises(ConfigError, match="at least 1"):
        env_int("Y", 1, {"Y": "0"}, minimum=1)


@pytest.mark.parametrize("setting, message", [
    ({"NULLOPS_INGRESS_LISTEN": "0.0.0.0"}, "has no port"),
    ({"NULLOPS_INGRESS_PUBLIC_SCHEME": "ftp"}, "use http or https"),
    ({"NULLOPS_INGRESS_PUBLIC_PORT": "0"}, "must be at least 1"),
])
def test_a_deployment_url_setting_that_makes_no_url_is_refused(setting, message):
    with pytest.raises(ConfigError, match=message):
        Config({"NULLOPS_SECRET_KEY": KEY, "NULLOPS_SESSION_SECRET": SESSION, **setting})


def test_an_empty_caddy_admin_url_turns_the_ingress_off_and_tests_keep_off_a_real_caddy():
    base = {"NULLOPS_SECRET_KEY": KEY, "NULLOPS_SESSION_SECRET": SESSION}
    assert Config(base).NULLOPS_CADDY_ADMIN_URL == "http://127.0.0.1:2019"
    assert Config({**base, "NULLOPS_CADDY_ADMIN_URL": ""}).NULLOPS_CADDY_ADMIN_URL == ""
    # The suite's own controllers must never full-sync a Caddy someone runs on this machine.
    from app.config import TestConfig

    assert TestConfig(environ={}).NULLOPS_CADDY_ADMIN_URL == ""
