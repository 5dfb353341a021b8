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
    key = cloud.strip().lower()
    if not vanity_domain:
        raise ConfigError(
            "ZSCALER_VANITY_DOMAIN is required for OneAPI authentication",
            hint="set it to your ZIdentity vanity domain, or a token URL override",
        )
    if not all(c.isalnum() or c in "-" for c in vanity_domain):
        raise ConfigError(f"ZSCALER_VANITY_DOMAIN={vanity_domain!r} is not a valid host label")
    if key in ("", "production"):
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
    if not key.isalnum():
        raise ConfigError(
            f"ZSCALER_CLOUD={cloud!r} is not a valid cloud name",
            hint="use production, beta, gov, govus or another cloud name of letters and digits",
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
