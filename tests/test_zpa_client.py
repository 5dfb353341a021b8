"""The ZPA client against the simulator over real sockets: auth modes, re-auth, rate limits,
retries, paging and consistency."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vault_zpa.errors import (
    ListingInconsistent,
    ZpaApiError,
    ZpaAuthError,
    ZpaRateLimited,
    ZpaUnavailable,
)
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.zpa.auth import LegacyAuth, OneApiAuth
from vault_zpa.zpa.client import RetryPolicy, ZpaClient, parse_retry_after
from vault_zpa.zpa.ratelimit import SlidingWindowLimiter

CONNECTOR = AssociationType.CONNECTOR_GRP
EDGE = AssociationType.SERVICE_EDGE_GRP
_OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def http() -> httpx.Client:
    client = httpx.Client()
    _OPEN.append(client)
    return client


def legacy_client(
    sim: ZpaSimulator,
    *,
    retry: RetryPolicy | None = None,
    get_limit: int = 1000,
    window: float = 10.0,
) -> ZpaClient:
    return ZpaClient(
        http=http(),
        auth=LegacyAuth(f"{sim.url}/signin", sim.client_id, Secret(sim.client_secret)),
        base_url=sim.url,
        customer_id=sim.customer_id,
        oneapi=False,
        get_limiter=SlidingWindowLimiter(get_limit, window, margin=0.05),
        write_limiter=SlidingWindowLimiter(1000, window),
        retry=retry or RetryPolicy(budget=20, base=0.05, cap=0.2, timeout=2),
    )


def rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_legacy_signin_and_paged_listing(sim: ZpaSimulator) -> None:
    """Legacy /signin, then every key of both types, parsed from string numbers."""
    client = legacy_client(sim)
    connectors = client.list_provisioning_keys(CONNECTOR)
    edges = client.list_provisioning_keys(EDGE)
    assert {k.id for k in connectors} == set(sim.keys["CONNECTOR_GRP"])
    assert {k.id for k in edges} == set(sim.keys["SERVICE_EDGE_GRP"])
    key = connectors[0]
    assert key.max_usage == 10
    assert key.usage_count == 0
    assert key.enrollment_cert_name == "Connector"
    assert key.key.reveal().startswith("3|api.private.zscaler.com|")
    assert "3|api" not in repr(key)


def test_listing_walks_every_page_of_500() -> None:
    """1,201 keys come back from three pages of 500, no more and no fewer (plus the re-read
    of page 1 that proves the listing did not change meanwhile)."""
    with ZpaSimulator(
        seed=3, connector_groups=1201, service_edge_groups=0, rate_limits=False
    ) as sim:
        client = legacy_client(sim)
        keys = client.list_provisioning_keys(CONNECTOR)
        assert len(keys) == 1201
        assert len({k.id for k in keys}) == 1201
        pages = sum(v for k, v in sim.stats.requests.items() if k.startswith("GET provisioningKey"))
        assert pages == 4


def test_oneapi_client_secret(sim: ZpaSimulator) -> None:
    """OneAPI client credentials reach the /zpa/mgmtconfig prefix."""
    client = ZpaClient(
        http=http(),
        auth=OneApiAuth(
            f"{sim.url}/oauth2/v1/token", sim.oneapi_client_id, Secret(sim.oneapi_client_secret)
        ),
        base_url=sim.url,
        customer_id=sim.customer_id,
        oneapi=True,
    )
    assert len(client.list_provisioning_keys(CONNECTOR)) == 3
    assert any(k.startswith("GET provisioningKey 200") for k in sim.stats.requests)


def test_oneapi_private_key_assertion_claims() -> None:
    """The RS256 client assertion carries iss = sub = client id, aud and a 600 s expiry."""
    private, public = rsa_pair()
    with ZpaSimulator(seed=2, oneapi_public_keys=(public,), rate_limits=False) as sim:
        auth = OneApiAuth(
            f"{sim.url}/oauth2/v1/token", sim.oneapi_client_id, private_key=Secret(private)
        )
        client = ZpaClient(
            http=http(), auth=auth, base_url=sim.url, customer_id=sim.customer_id, oneapi=True
        )
        before = int(time.time())
        assert len(client.list_provisioning_keys(EDGE)) == 2
        [claims] = sim.assertions
        assert claims["iss"] == claims["sub"] == sim.oneapi_client_id
        assert claims["aud"] == "https://api.zscaler.com"
        assert 595 <= int(claims["exp"]) - before <= 605  # type: ignore[call-overload]
        header = jwt.get_unverified_header(auth.assertion(time.time()))
        assert header["alg"] == "RS256"


def test_wrong_credentials_are_a_clear_auth_error(sim: ZpaSimulator) -> None:
    """A refused sign-in says so, without the secret."""
    client = ZpaClient(
        http=http(),
        auth=LegacyAuth(f"{sim.url}/signin", sim.client_id, Secret("wrong-secret")),
        base_url=sim.url,
        customer_id=sim.customer_id,
        oneapi=False,
    )
    with pytest.raises(ZpaAuthError) as info:
        client.list_provisioning_keys(CONNECTOR)
    assert "refused the credentials" in str(info.value)
    assert "wrong-secret" not in str(info.value)


def test_401_triggers_exactly_one_reauth(sim: ZpaSimulator) -> None:
    """An expired token costs one re-login and one retry, never a loop."""
    client = legacy_client(sim)
    client.list_provisioning_keys(CONNECTOR)
    sim.expire_tokens()
    assert len(client.list_provisioning_keys(CONNECTOR)) == 3
    assert client.stats.reauth == 1
    signins = sum(v for k, v in client.stats.requests.items() if k[1] == "auth")
    assert signins == 2
    # A token that is rejected even right after a fresh sign-in is an error, not a loop.
    sim.set_faults(unauthorized_next=5)
    with pytest.raises(ZpaAuthError):
        client.list_provisioning_keys(CONNECTOR)
    assert client.stats.reauth == 2


def test_429_retry_after_is_honoured(sim: ZpaSimulator) -> None:
    """A 429 with retry-after: 1s makes the client wait at least that long, then succeed."""
    client = legacy_client(sim)
    client.list_provisioning_keys(CONNECTOR)  # sign in first
    sim.set_faults(storm_429=1, retry_after=1)
    started = time.monotonic()
    assert len(client.list_provisioning_keys(CONNECTOR)) == 3
    assert time.monotonic() - started >= 1.0
    assert client.stats.rate_limited == 1


def test_429_storm_past_the_budget_names_endpoint_and_reason(sim: ZpaSimulator) -> None:
    """When 429s outlast the budget the error names the endpoint and ZPA's id and reason."""
    client = legacy_client(sim, retry=RetryPolicy(budget=2.5, base=0.05, cap=0.1, timeout=2))
    client.list_provisioning_keys(CONNECTOR)
    sim.set_faults(storm_429=100, retry_after=1)
    with pytest.raises(ZpaRateLimited) as info:
        client.list_provisioning_keys(CONNECTOR)
    text = str(info.value)
    assert "/associationType/CONNECTOR_GRP/provisioningKey" in text
    assert "invalid.toomanyrequests" in text
    assert "Exceeded the number of requests allowed." in text


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409, 412])
def test_5xx_is_retried_then_succeeds(sim: ZpaSimulator, status: int) -> None:
    """Two server errors (or edit-lock / concurrency answers) in a row are retried away."""
    client = legacy_client(sim)
    sim.set_faults(fail_next=2, error_status=status)
    assert len(client.list_provisioning_keys(CONNECTOR)) == 3
    assert client.stats.retries >= 2


def test_persistent_5xx_fails_clearly_within_the_budget(sim: ZpaSimulator) -> None:
    """A ZPA that keeps failing ends in one clear error after a bounded time."""
    client = legacy_client(sim, retry=RetryPolicy(budget=1.5, base=0.05, cap=0.2, timeout=1))
    client.list_provisioning_keys(CONNECTOR)
    sim.set_faults(error_rate=1.0, error_status=503)
    started = time.monotonic()
    with pytest.raises(ZpaApiError) as info:
        client.list_provisioning_keys(CONNECTOR)
    assert time.monotonic() - started < 5
    assert "HTTP 503" in str(info.value)
    assert "attempts" in str(info.value)


def test_timeouts_and_dropped_connections_are_retried(sim: ZpaSimulator) -> None:
    """A hung request times out and a dropped connection is retried; then the listing works."""
    client = legacy_client(sim, retry=RetryPolicy(budget=20, base=0.05, cap=0.2, timeout=0.5))
    client.list_provisioning_keys(CONNECTOR)
    sim.set_faults(hang_next=1, hang=2.0, drop_next=1)
    assert len(client.list_provisioning_keys(CONNECTOR)) == 3
    assert client.stats.retries >= 2


def test_unreachable_zpa_is_a_clear_error() -> None:
    """Nothing listening: ZpaUnavailable naming the host, within the budget."""
    client = ZpaClient(
        http=http(),
        auth=LegacyAuth("http://127.0.0.1:9/signin", "id", Secret("s3cret-x")),
        base_url="http://127.0.0.1:9",
        customer_id="1",
        oneapi=False,
        retry=RetryPolicy(budget=1.0, base=0.05, cap=0.1, timeout=0.5),
    )
    with pytest.raises(ZpaUnavailable) as info:
        client.list_provisioning_keys(CONNECTOR)
    assert "127.0.0.1" in str(info.value)


def test_malformed_json_is_retried(sim: ZpaSimulator) -> None:
    """A truncated JSON body is not parsed as an empty listing; the retry gets the real one."""
    client = legacy_client(sim)
    sim.set_faults(malformed_next=1)
    assert len(client.list_provisioning_keys(CONNECTOR)) == 3


def test_listing_that_changes_between_pages_raises() -> None:
    """totalCount moving mid-listing is an error, never a shorter list."""
    with ZpaSimulator(
        seed=4, connector_groups=700, service_edge_groups=0, rate_limits=False
    ) as sim:
        client = legacy_client(sim)
        sim.set_faults(change_between_pages=True)
        with pytest.raises(ListingInconsistent):
            client.list_provisioning_keys(CONNECTOR)


def test_failing_page_raises_instead_of_shrinking() -> None:
    """Page 2 failing past the budget fails the listing of that type."""
    with ZpaSimulator(
        seed=5, connector_groups=600, service_edge_groups=0, rate_limits=False
    ) as sim:
        client = legacy_client(sim, retry=RetryPolicy(budget=1.0, base=0.05, cap=0.1, timeout=1))
        sim.set_faults(fail_page=2, error_status=500)
        with pytest.raises(ZpaApiError):
            client.list_provisioning_keys(CONNECTOR)


def test_burst_of_200_gets_gets_no_429() -> None:
    """With ZPA's documented 20 GET per window enforced, 200 GETs see zero 429s.
    (The window is scaled from 10 s to 1 s on both sides so the test takes ~10 s.)"""
    with ZpaSimulator(seed=6, rate_limits=True, get_limit=20, window=1.0) as sim:
        client = ZpaClient(
            http=http(),
            auth=LegacyAuth(f"{sim.url}/signin", sim.client_id, Secret(sim.client_secret)),
            base_url=sim.url,
            customer_id=sim.customer_id,
            oneapi=False,
            get_limiter=SlidingWindowLimiter(20, 1.0, margin=0.05),
        )
        for _ in range(200):
            client.get_provisioning_key(CONNECTOR, next(iter(sim.keys["CONNECTOR_GRP"])))
        assert sim.stats.rate_limited == 0
        assert client.stats.rate_limited == 0
        assert sum(v for k, v in sim.stats.requests.items() if k.startswith("GET ")) == 200


def test_create_get_update_delete_round_trip(sim: ZpaSimulator) -> None:
    """The operations rotation needs: create (200 + object), find by name, update (204), delete."""
    client = legacy_client(sim)
    group_id = next(iter(sim.groups["CONNECTOR_GRP"]))
    cert = client.find_enrollment_cert("Connector")
    assert cert is not None
    key = client.create_provisioning_key(
        CONNECTOR,
        name="new key 1",
        group_id=group_id,
        enrollment_cert_id=str(cert["id"]),
        max_usage=7,
    )
    assert key.group_name == sim.groups["CONNECTOR_GRP"][group_id]["name"]
    assert key.max_usage == 7
    found = client.find_provisioning_key(CONNECTOR, "new key 1")
    assert found is not None
    assert found.id == key.id
    client.update_provisioning_key(CONNECTOR, key.id, {"enabled": False})
    assert client.get_provisioning_key(CONNECTOR, key.id).enabled is False
    client.delete_provisioning_key(CONNECTOR, key.id)
    client.delete_provisioning_key(CONNECTOR, key.id)  # already gone: still fine
    assert key.id not in sim.keys["CONNECTOR_GRP"]
    with pytest.raises(ZpaApiError) as info:
        client.get_provisioning_key(CONNECTOR, key.id)
    assert info.value.zpa_id == "resource.not.found"


def test_microtenant_scoping() -> None:
    """microtenantId limits the listing to that microtenant's keys."""
    with ZpaSimulator(seed=8, connector_groups=2, service_edge_groups=0, rate_limits=False) as sim:
        group = sim.add_group("CONNECTOR_GRP", "tenant-a-group", microtenant_id="555")
        sim.add_key("CONNECTOR_GRP", group["id"], name="tenant-a-key")
        client = legacy_client(sim)
        client.microtenant_id = "555"
        keys = client.list_provisioning_keys(CONNECTOR)
        assert [k.name for k in keys] == ["tenant-a-key"]
        assert keys[0].microtenant_id == "555"


@pytest.mark.parametrize(
    ("value", "seconds"), [("13s", 13.0), ("4", 4.0), (" 2s ", 2.0), (None, None), ("soon", None)]
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    """ZPA's '13s' form and plain seconds are understood; anything else is ignored."""
    assert parse_retry_after(value) == seconds


def test_token_is_cached_between_calls(sim: ZpaSimulator) -> None:
    """One sign-in serves many calls while the token is fresh."""
    client = legacy_client(sim)
    for _ in range(5):
        client.list_provisioning_keys(CONNECTOR)
    assert sum(v for k, v in client.stats.requests.items() if k[1] == "auth") == 1


def test_token_is_refreshed_shortly_before_expiry() -> None:
    """A token that expires within the safety margin is replaced before use, not after a 401."""
    with ZpaSimulator(seed=9, token_lifetime=30, rate_limits=False) as sim:
        client = legacy_client(sim)
        client.list_provisioning_keys(CONNECTOR)
        client.list_provisioning_keys(CONNECTOR)
        assert sum(v for k, v in client.stats.requests.items() if k[1] == "auth") == 2
        assert client.stats.reauth == 0
