"""The one exception tree of vault-zpa; every boundary translates foreign errors into it.

Exit codes (README "Exit codes"; `vault-zpa --help`): 0 all done; 1 something failed or needs
attention, and running again later may succeed with nothing changed (a service unreachable,
sealed or failing, an item or a listing failed, drift, a conflict); 2 bad usage or
configuration: nothing will work until a person changes a flag, the environment, the config
file, a credential or Vault's setup (wrong mount or KV version, an untrusted certificate, a
refused token or login, an unknown namespace).

    VaultZpaError                 exit 1 unless a subclass says otherwise
    ├── ConfigError               exit 2: bad flags, environment or config file
    ├── ZpaError                  anything the ZPA side could not do
    │   ├── ZpaAuthError          exit 2: sign-in refused or token endpoint unusable
    │   ├── ZpaApiError           ZPA answered with an error (status, ZPA id and reason)
    │   │   └── ZpaRateLimited    429 past the retry budget
    │   ├── ZpaUnavailable        timeouts / connection errors past the retry budget
    │   ├── ZpaOutcomeUnknown     a create may or may not have happened (never retried blindly)
    │   └── ListingInconsistent   pages disagreed; the listing must not be trusted
    └── VaultError                anything the Vault side could not do
        ├── VaultUnavailable      unreachable, sealed, 5xx past the retry budget
        │   └── VaultTlsError     exit 2: certificate not trusted, or https to plain http
        ├── VaultAuthError        exit 2: token refused, login impossible, unknown namespace
        ├── VaultPermissionDenied exit 2: 403, names path and capability
        ├── CasConflict           someone else wrote between our read and our write
        └── VaultMountError       mount missing or not KV (exit 2: configuration)

Messages are one line, say what went wrong and what to do, and never contain secret values.
"""

from __future__ import annotations


class VaultZpaError(Exception):
    """Root of every error vault-zpa raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class ConfigError(VaultZpaError):
    """Configuration or usage is wrong; nothing was attempted."""

    exit_code = 2


class ZpaError(VaultZpaError):
    """The ZPA side failed."""


class ZpaAuthError(ZpaError):
    """ZPA refused our credentials or the token endpoint is unusable: configuration."""

    exit_code = 2


class ZpaApiError(ZpaError):
    """ZPA answered with an error status."""

    def __init__(
        self,
        *,
        endpoint: str,
        status: int,
        zpa_id: str | None = None,
        reason: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.endpoint = endpoint
        self.status = status
        self.zpa_id = zpa_id
        self.reason = reason
        self.attempts = attempts
        detail = f"HTTP {status}"
        if zpa_id:
            detail += f" {zpa_id}"
        if reason:
            detail += f": {reason}"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"ZPA {endpoint} failed{tries}: {detail}")


class ZpaRateLimited(ZpaApiError):
    """ZPA kept answering 429 past our retry budget."""


class ZpaUnavailable(ZpaError):
    """ZPA could not be reached (timeouts, connection errors) within the retry budget."""


class ZpaOutcomeUnknown(ZpaError):
    """A create may have reached ZPA, but no answer says whether it happened (read timeout,
    connection dropped after sending, 5xx, unreadable 200). Never retried: the caller looks the
    object up by its unique name before creating again."""


class ListingInconsistent(ZpaError):
    """A paged listing changed or broke part-way; it must never be read as 'keys deleted'."""


class VaultError(VaultZpaError):
    """The Vault side failed."""


class VaultUnavailable(VaultError):
    """Vault is unreachable, sealed or answering 5xx past the retry budget."""

    retryable = True


class VaultTlsError(VaultUnavailable):
    """Vault's certificate could not be verified (or VAULT_ADDR says https to a plain-http
    listener): retrying will not help, the configuration must change."""

    retryable = False
    exit_code = 2


class VaultAuthError(VaultError):
    """No usable Vault token could be obtained or kept: a credential is wrong (configuration)."""

    exit_code = 2


class VaultPermissionDenied(VaultError):
    """Vault answered 403; the message names the path and the capability the policy lacks.
    Fatal (before anything was done) it is configuration, exit 2; for one item of a sync it is
    that item's failure (exit 1, the rest were done)."""

    exit_code = 2

    def __init__(self, *, path: str, capability: str) -> None:
        self.path = path
        self.capability = capability
        super().__init__(
            f"Vault denied {capability!r} on {path!r}",
            hint=f'grant capabilities = ["{capability}"] on path "{path}" in the token\'s policy',
        )


class CasConflict(VaultError):
    """A check-and-set write lost: the secret changed after we read it."""

    def __init__(self, *, path: str, expected_version: int) -> None:
        self.path = path
        self.expected_version = expected_version
        super().__init__(
            f"{path} changed in Vault after it was read (expected version {expected_version}); "
            "not overwritten, the next run will re-read it"
        )


class VaultMountError(VaultError):
    """The configured mount does not exist or is not a KV secrets engine."""

    exit_code = 2
