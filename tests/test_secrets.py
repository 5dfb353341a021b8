"""Canaries: plant unique secret values everywhere a secret can enter, run the commands at debug
log level through faults, and search every output for them."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Vault, clean_env, run_cli
from vault_zpa.config import load
from vault_zpa.errors import VaultZpaError
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.zpa.auth import LegacyAuth
from vault_zpa.zpa.client import RetryPolicy, ZpaClient


def canary(kind: str) -> str:
    return f"CANARY{kind}{uuid.uuid4().hex}"


@pytest.fixture
def planted(vault: Vault) -> dict[str, str]:
    """A simulator whose client secret and keys are canaries, and a canary Vault token."""
    values = {
        "client_secret": canary("zpasecret"),
        "key1": "3|api.private.zscaler.com|" + canary("provkey"),
        "key2": "3|api.private.zscaler.com|" + canary("provkey"),
        "vault_token": canary("vaulttoken"),
    }
    vault.api(
        "POST", "auth/token/create", json={"id": values["vault_token"], "policies": ["root"]}
    ).raise_for_status()
    return values


def test_no_secret_reaches_any_output(vault: Vault, planted: dict[str, str]) -> None:
    """sync, dry-run, status and errors, at debug level, text and JSON logs, with 429s, 5xx,
    401s and malformed bodies on the way: no canary in stdout or stderr."""
    with ZpaSimulator(
        seed=11,
        connector_groups=1,
        service_edge_groups=1,
        client_secret=planted["client_secret"],
        rate_limits=False,
    ) as sim:
        for atype, name in (("CONNECTOR_GRP", "key1"), ("SERVICE_EDGE_GRP", "key2")):
            group_id = next(iter(sim.groups[atype]))
            sim.add_key(
                atype, group_id, name=f"canary-{name}", value=planted[name], created=2_000_000_000
            )
        env = clean_env(sim.env(), vault.env, {"VAULT_TOKEN": planted["vault_token"]})
        outputs: list[str] = []
        runs = [
            ("sync", "--log-level", "debug"),
            ("sync", "--log-level", "debug", "--log-format", "json", "--output", "json"),
            ("sync", "--dry-run", "--log-level", "debug", "-v"),
            ("status", "--log-level", "debug"),
            ("status", "--output", "json", "--log-level", "debug", "--log-format", "json"),
        ]
        faults = [
            dict(storm_429=2, retry_after=1),
            dict(fail_next=2, error_status=502),
            dict(unauthorized_next=1),
            dict(malformed_next=1),
            {},
        ]
        for args, fault in zip(runs, faults, strict=True):
            sim.set_faults(**fault)
            result = run_cli(*args, env=env)
            assert result.returncode == 0, result.stderr
            outputs += [result.stdout, result.stderr]
        # Errors: wrong ZPA secret, wrong Vault token, unreachable ZPA.
        bad = [
            {**env, "ZPA_CLIENT_SECRET": canary("wrongsecret")},
            {**env, "VAULT_TOKEN": canary("wrongtoken")},
            {**env, "ZPA_BASE_URL": "http://127.0.0.1:9", "VAULT_ZPA_ZPA_RETRY_BUDGET": "1s"},
        ]
        for bad_env in bad:
            result = run_cli("sync", "--log-level", "debug", env=bad_env)
            assert result.returncode != 0
            outputs += [result.stdout, result.stderr]
            planted_now = [bad_env["ZPA_CLIENT_SECRET"], bad_env["VAULT_TOKEN"]]
            assert not any(p in result.stdout + result.stderr for p in planted_now)
        # --reveal is the one way a person asks for keys.
        revealed = run_cli("sync", "--dry-run", "--reveal", "-v", env=env)
        assert planted["key1"] in revealed.stdout
    everything = "\n".join(outputs)
    assert "CANARY" not in everything, [
        line for line in everything.splitlines() if "CANARY" in line
    ][:3]


def test_client_library_logs_and_errors_mask_credentials(caplog: pytest.LogCaptureFixture) -> None:
    """httpx/httpcore debug logs, our logs, reprs and exceptions never show the ZPA secret."""
    secret = canary("libsecret")
    caplog.set_level(logging.DEBUG)
    with ZpaSimulator(seed=12, client_secret=secret, rate_limits=False) as sim:
        auth = LegacyAuth(f"{sim.url}/signin", sim.client_id, Secret(secret))
        with ZpaClient(
            http=httpx.Client(),
            auth=auth,
            base_url=sim.url,
            customer_id=sim.customer_id,
            oneapi=False,
            retry=RetryPolicy(budget=2, base=0.05, cap=0.1, timeout=1),
        ) as client:
            sim.set_faults(fail_next=1)
            keys = client.list_provisioning_keys(AssociationType.CONNECTOR_GRP)
            texts = [repr(client), repr(auth), str(auth), repr(keys), *map(repr, keys)]
            sim.set_faults(error_rate=1.0)
            with pytest.raises(VaultZpaError) as info:
                client.list_provisioning_keys(AssociationType.CONNECTOR_GRP)
            texts.append(str(info.value))
    texts += [r.getMessage() for r in caplog.records]
    joined = "\n".join(texts)
    assert secret not in joined
    assert not any(str(k.key.reveal()) in joined for k in keys)


def test_config_reprs_mask_secrets(tmp_path: object) -> None:
    """Settings and their secrets print masked; bad secret values are not echoed in errors."""
    secret, token = canary("cfgsecret"), canary("cfgtoken")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    settings = load(
        path=None,
        environ={
            "ZPA_CLIENT_ID": "id",
            "ZPA_CLIENT_SECRET": secret,
            "ZPA_CUSTOMER_ID": "1",
            "VAULT_TOKEN": token,
        },
    )
    text = repr(settings) + str(settings) + repr(settings.zpa()) + repr(settings.vault)
    assert secret not in text
    assert token not in text
    oneapi = load(
        path=None,
        environ={
            "ZSCALER_CLIENT_ID": "c",
            "ZSCALER_PRIVATE_KEY": pem,
            "ZSCALER_VANITY_DOMAIN": "acme",
            "ZPA_CUSTOMER_ID": "1",
        },
    )
    assert "PRIVATE KEY" not in repr(oneapi.zpa())
    with pytest.raises(VaultZpaError) as info:
        load(
            path=None,
            environ={
                "ZSCALER_CLIENT_ID": "c",
                "ZSCALER_PRIVATE_KEY": "-----BEGIN " + canary("badpem"),
                "ZSCALER_VANITY_DOMAIN": "acme",
                "ZPA_CUSTOMER_ID": "1",
            },
        ).zpa()
    assert "CANARY" not in str(info.value)
