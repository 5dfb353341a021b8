"""Turn validated Settings into live objects: the ZPA client and the Vault store.

The CLI and the daemon both build through here, so both get the same TLS, auth, rate-limit and
retry behaviour."""

from __future__ import annotations

import logging
import warnings

import httpx
import urllib3

from vault_zpa.config import Settings, VaultSettings, ZpaSettings
from vault_zpa.errors import ConfigError
from vault_zpa.provision import ProvisionStep
from vault_zpa.vault.auth import AppRoleAuth, AuthMethod, KubernetesAuth, TokenAuth
from vault_zpa.vault.connection import TlsSettings, VaultConnection
from vault_zpa.vault.kv import HvacKvStore, check_kv_version, detect_kv_version
from vault_zpa.zpa.auth import LegacyAuth, OneApiAuth, TokenSource
from vault_zpa.zpa.client import RetryPolicy, ZpaClient
from vault_zpa.zpa.ratelimit import SlidingWindowLimiter

log = logging.getLogger(__name__)


def zpa_client(
    settings: ZpaSettings,
    *,
    http: httpx.Client | None = None,
    get_limiter: SlidingWindowLimiter | None = None,
) -> ZpaClient:
    """`get_limiter` replaces the GET limiter built from the settings (the CLI hands in a
    watched one to show waits on ZPA's rate limit)."""
    auth: TokenSource
    if settings.mode == "legacy":
        assert settings.client_secret is not None
        auth = LegacyAuth(settings.token_url, settings.client_id, settings.client_secret)
    else:
        auth = OneApiAuth(
            settings.token_url, settings.client_id, settings.client_secret, settings.private_key
        )
    return ZpaClient(
        http=http
        or httpx.Client(
            timeout=settings.timeout, follow_redirects=False, headers={"User-Agent": "vault-zpa"}
        ),
        auth=auth,
        base_url=settings.base_url,
        customer_id=settings.customer_id,
        oneapi=settings.mode == "oneapi",
        microtenant_id=settings.microtenant_id,
        get_limiter=get_limiter or SlidingWindowLimiter(settings.get_limit, settings.rate_window),
        write_limiter=SlidingWindowLimiter(settings.write_limit, settings.rate_window),
        retry=RetryPolicy(budget=settings.retry_budget, timeout=settings.timeout),
        partner_id=settings.partner_id,
    )


def vault_auth(settings: VaultSettings) -> AuthMethod:
    if settings.auth_method == "approle":
        return AppRoleAuth(
            settings.approle_role_id,
            settings.approle_role_id_file,
            settings.approle_secret_id,
            settings.approle_secret_id_file,
            settings.approle_mount,
        )
    if settings.auth_method == "kubernetes":
        assert settings.kubernetes_role is not None
        return KubernetesAuth(
            settings.kubernetes_role, settings.kubernetes_jwt_file, settings.kubernetes_mount
        )
    if settings.token is None and settings.token_file is None:
        raise ConfigError(
            "no Vault token: set VAULT_TOKEN or VAULT_ZPA_TOKEN_FILE, run `vault login` "
            "(~/.vault-token), or choose VAULT_ZPA_AUTH_METHOD=approle|kubernetes"
        )
    return TokenAuth(settings.token, settings.token_file)


def vault_connection(settings: VaultSettings, *, auth: AuthMethod | None = None) -> VaultConnection:
    """`auth` replaces the method the settings name (fetch with a wrapped token: no token, or
    an AppRole login with the secret-id it unwrapped)."""
    if settings.skip_verify:
        # Our one loud warning replaces urllib3's warning on every single request.
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        log.warning(
            "VAULT_SKIP_VERIFY is set: Vault's TLS certificate is NOT verified; "
            "anyone on the network path can read the keys"
        )
    if settings.addr.startswith("http://") and not _loopback(settings.addr):
        log.warning(
            "VAULT_ADDR uses plain http to a non-loopback host: keys cross the network unencrypted"
        )
    return VaultConnection(
        addr=settings.addr,
        auth=auth or vault_auth(settings),
        namespace=settings.namespace,
        tls=TlsSettings(
            settings.cacert,
            settings.capath,
            settings.client_cert,
            settings.client_key,
            settings.skip_verify,
        ),
        timeout=settings.timeout,
        retry_budget=settings.retry_budget,
        pool_size=settings.concurrency,
    )


def kv_store(settings: Settings, conn: VaultConnection | None = None) -> HvacKvStore:
    vault = settings.vault
    conn = conn or vault_connection(vault)
    if vault.kv_version == "auto":
        version = detect_kv_version(conn, vault.mount)
    else:
        version = int(vault.kv_version)
        check_kv_version(conn, vault.mount, version)
    lease = settings.values.get("sync.lease")
    ttl = f"{int(lease)}s" if version == 1 and lease else None
    return HvacKvStore(
        conn, mount=vault.mount, kv_version=version, max_versions=vault.max_versions, ttl=ttl
    )


def _loopback(addr: str) -> bool:
    host = httpx.URL(addr).host
    return host in ("127.0.0.1", "::1", "localhost")


def provision_step(settings: Settings, zpa: ZpaClient, store: HvacKvStore) -> ProvisionStep | None:
    """The sync's provisioning step when any [association_type.T.provision] is enabled."""
    if not settings.provision.any_enabled:
        return None
    step = ProvisionStep(
        zpa=zpa,
        store=store,
        prefix=settings.vault.prefix,
        settings=settings.provision,
        rules=settings.rules,
        kill_at=settings.values.get("sync.fault_kill_at") or None,
        takeover=settings.rotation.takeover,
    )
    step.check(settings.association_types, store.kv_version)
    return step
