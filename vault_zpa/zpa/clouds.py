"""ZPA clouds: legacy `ZPA_CLOUD` base URLs and OneAPI `ZSCALER_CLOUD` hosts (zpa-api.md §5)."""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

from vault_zpa.errors import ConfigError

LEGACY_BASE_URLS: Final[dict[str, str]] = {
    "PRODUCTION": "https://config.private.zscaler.com",
    "ZPATWO": "https://config.zpatwo.net",
    "BETA": "https://config.zpabeta.net",
    "GOV": "https://config.zpagov.net",
    "GOVUS": "https://config.zpagov.us",
    "PREVIEW": "https://config.zpapreview.net",
    "QA": "https://config.qa.zpath.net",
    "QA2": "https://pdx2-zpa-config.qa2.zpath.net",
    "DEV": "https://public-api.dev.zpath.net",
}
# Terraform docs spell PREVIEW as ZSPREVIEW; accept both.
LEGACY_ALIASES: Final[dict[str, str]] = {"ZSPREVIEW": "PREVIEW", "": "PRODUCTION"}
# The OneAPI clouds with documented hosts (zpa-api.md §5; ANS accepts exactly these).
ONEAPI_CLOUDS: Final = ("production", "beta", "gov", "govus")
DEV_TOKEN_URL: Final = (
    "https://authn1.dev.zpath.net/authn/v1/oauth/token?grant_type=CLIENT_CREDENTIALS"
)


def legacy_base_url(cloud: str) -> str:
    key = cloud.strip().upper()
    key = LEGACY_ALIASES.get(key, key)
    try:
        return LEGACY_BASE_URLS[key]
    except KeyError:
        raise ConfigError(
            f"ZPA_CLOUD={cloud!r} is not a known ZPA cloud",
            hint=f"use one of {', '.join(LEGACY_BASE_URLS)} or set ZPA_BASE_URL",
        ) from None


def oneapi_urls(cloud: str, vanity_domain: str) -> tuple[str, str]:
    """(token URL, API base URL) for a OneAPI cloud and vanity domain."""
    key = cloud.strip().lower() or "production"
    if key not in ONEAPI_CLOUDS:
        # GO would build zslogin<anything>.net, a host that does not exist for a typo such as
        # `prod`: every call would then wait on DNS and connection timeouts (issue 17).
        raise ConfigError(
            f"ZSCALER_CLOUD={cloud!r} is not a known OneAPI cloud",
            hint=f"use one of {', '.join(ONEAPI_CLOUDS)}, or set VAULT_ZPA_ZPA_TOKEN_URL and "
            "ZPA_BASE_URL for another one",
        )
    if not vanity_domain:
        raise ConfigError(
            "ZSCALER_VANITY_DOMAIN is required for OneAPI authentication",
            hint="set it to your ZIdentity vanity domain, or a token URL override",
        )
    if not all(c.isalnum() or c in "-" for c in vanity_domain):
        raise ConfigError(f"ZSCALER_VANITY_DOMAIN={vanity_domain!r} is not a valid host label")
    if key == "production":
        return (f"https://{vanity_domain}.zslogin.net/oauth2/v1/token", "https://api.zsapi.net")
    if key == "gov":
        return (
            f"https://{vanity_domain}.zidentitygov.net/oauth2/v1/token",
            "https://api.zscalergov.net",
        )
    if key == "govus":
        return (
            f"https://{vanity_domain}.zidentitygov.us/oauth2/v1/token",
            "https://api.zscalergov.us",
        )
    return (
        f"https://{vanity_domain}.zslogin{key}.net/oauth2/v1/token",
        f"https://api.{key}.zsapi.net",
    )


def check_url(url: str, what: str) -> str:
    """https anywhere; plain http only to loopback (the simulator, a local proxy)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}={url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"{what}={url!r} uses plain http to a non-loopback host",
            hint="use https; plain http is accepted only for 127.0.0.1, ::1 and localhost",
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
