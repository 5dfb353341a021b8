"""Configuration: auth-mode selection, clouds, URLs, precedence and validation (no I/O)."""

from __future__ import annotations

import pytest

from vault_zpa.config import load, parse_duration
from vault_zpa.errors import ConfigError
from vault_zpa.zpa.clouds import LEGACY_BASE_URLS

LEGACY = {"ZPA_CLIENT_ID": "id", "ZPA_CLIENT_SECRET": "legacy-secret", "ZPA_CUSTOMER_ID": "123"}
ONEAPI = {
    "ZSCALER_CLIENT_ID": "cid",
    "ZSCALER_CLIENT_SECRET": "oneapi-secret",
    "ZSCALER_VANITY_DOMAIN": "acme",
    "ZPA_CUSTOMER_ID": "123",
}


@pytest.mark.parametrize(("cloud", "base"), sorted(LEGACY_BASE_URLS.items()))
def test_every_legacy_cloud(cloud: str, base: str) -> None:
    """Each ZPA_CLOUD maps to its documented base URL and /signin."""
    zpa = load(path=None, environ={**LEGACY, "ZPA_CLOUD": cloud.lower()}).zpa()
    assert zpa.base_url == base
    assert zpa.mode == "legacy"
    if cloud != "DEV":
        assert zpa.token_url == f"{base}/signin"


@pytest.mark.parametrize(
    ("cloud", "token_url", "base"),
    [
        ("", "https://acme.zslogin.net/oauth2/v1/token", "https://api.zsapi.net"),
        ("production", "https://acme.zslogin.net/oauth2/v1/token", "https://api.zsapi.net"),
        ("beta", "https://acme.zsloginbeta.net/oauth2/v1/token", "https://api.beta.zsapi.net"),
        ("gov", "https://acme.zidentitygov.net/oauth2/v1/token", "https://api.zscalergov.net"),
        ("govus", "https://acme.zidentitygov.us/oauth2/v1/token", "https://api.zscalergov.us"),
    ],
)
def test_every_oneapi_cloud(cloud: str, token_url: str, base: str) -> None:
    """ZSCALER_CLOUD picks the ZIdentity token host and the API base, gov clouds included."""
    env = {**ONEAPI, "ZSCALER_CLOUD": cloud} if cloud else ONEAPI
    zpa = load(path=None, environ=env).zpa()
    assert (zpa.mode, zpa.token_url, zpa.base_url) == ("oneapi", token_url, base)


def test_both_credential_kinds_need_a_choice() -> None:
    """Legacy and OneAPI credentials together are an error until ZSCALER_USE_LEGACY_CLIENT says."""
    with pytest.raises(ConfigError, match="ZSCALER_USE_LEGACY_CLIENT"):
        load(path=None, environ={**LEGACY, **ONEAPI}).zpa()
    assert (
        load(path=None, environ={**LEGACY, **ONEAPI, "ZSCALER_USE_LEGACY_CLIENT": "true"})
        .zpa()
        .mode
        == "legacy"
    )
    assert (
        load(path=None, environ={**LEGACY, **ONEAPI, "ZSCALER_USE_LEGACY_CLIENT": "false"})
        .zpa()
        .mode
        == "oneapi"
    )


def test_secret_and_private_key_are_exclusive() -> None:
    """OneAPI takes a client secret or a private key, not both."""
    with pytest.raises(ConfigError, match="mutually exclusive"):
        load(path=None, environ={**ONEAPI, "ZSCALER_PRIVATE_KEY": "/nonexistent.pem"}).zpa()


@pytest.mark.parametrize("url", ["http://zpa.example.com", "ftp://127.0.0.1", "nonsense"])
def test_plain_http_only_to_loopback(url: str) -> None:
    """ZPA_BASE_URL must be https unless it points at loopback."""
    with pytest.raises(ConfigError):
        load(path=None, environ={**LEGACY, "ZPA_BASE_URL": url}).zpa()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000",
        "http://[::1]:1",
        "http://localhost:2",
        "https://zpa.internal.example",
    ],
)
def test_loopback_http_and_any_https_are_accepted(url: str) -> None:
    """The simulator on loopback and private clouds over https are fine."""
    assert load(path=None, environ={**LEGACY, "ZPA_BASE_URL": url}).zpa().base_url == url


def test_oneapi_with_token_and_base_overrides_needs_no_vanity() -> None:
    """A private OneAPI endpoint (or the simulator) is set by its token URL and base URL."""
    env = {
        "ZSCALER_CLIENT_ID": "c",
        "ZSCALER_CLIENT_SECRET": "s",
        "ZPA_CUSTOMER_ID": "1",
        "ZPA_BASE_URL": "http://127.0.0.1:5",
        "VAULT_ZPA_ZPA_TOKEN_URL": "http://127.0.0.1:5/oauth2/v1/token",
    }
    zpa = load(path=None, environ=env).zpa()
    assert zpa.token_url == "http://127.0.0.1:5/oauth2/v1/token"
    assert zpa.base_url == "http://127.0.0.1:5"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("30d", 2592000), ("1.5", 1.5), (90, 90)],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations read as Go/Vault-style strings or seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1s", "0", "1h 30m", True])
def test_bad_durations(text: object) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_flags_beat_env_beat_file(tmp_path: object) -> None:
    """Precedence: flags > environment > file > default, with the source recorded."""
    from pathlib import Path

    path = Path(str(tmp_path)) / "c.toml"
    path.write_text('[vault]\nprefix = "file"\nconcurrency = 3\n')
    s = load(path=str(path), environ={"VAULT_ZPA_PREFIX": "env"}, flags={"vault.prefix": "flag"})
    assert s.vault.prefix == "flag"
    assert s.vault.concurrency == 3
    assert s.sources["vault.concurrency"].endswith("[vault] concurrency")
    s = load(path=str(path), environ={"VAULT_ZPA_PREFIX": "env", "VAULT_ZPA_CONFIG": "x"})
    assert s.vault.prefix == "env"
    assert load(path=None, environ={}).vault.prefix == "zpa"


def test_approle_and_kubernetes_need_their_inputs() -> None:
    """Choosing an auth method without its credentials is a configuration error."""
    with pytest.raises(ConfigError, match="ROLE_ID"):
        load(path=None, environ={"VAULT_ZPA_AUTH_METHOD": "approle"})
    with pytest.raises(ConfigError, match="KUBERNETES_ROLE"):
        load(path=None, environ={"VAULT_ZPA_AUTH_METHOD": "kubernetes"})
