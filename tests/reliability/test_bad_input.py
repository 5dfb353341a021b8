"""Bad input, generated: config files, environment values and ZPA payloads. Always a clear
one-line error or a skipped item with a reason; never a traceback, never a partial write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Vault, clean_env, run_cli
from tests.reliability.conftest import Recorder
from vault_zpa.config import OPTIONS, load
from vault_zpa.errors import ConfigError, VaultZpaError
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.zpa.auth import LegacyAuth
from vault_zpa.zpa.client import RetryPolicy, ZpaClient, parse_key

ENV_NAMES = sorted({env for option in OPTIONS for env in option.env})
SECTIONS = [
    "zpa",
    "vault",
    "sync",
    "daemon",
    "log",
    "association_type.CONNECTOR_GRP",
    "association_type.CONNECTOR_GRP.rotation",
    "nope",
]
KEYS = [
    *sorted({o.name.split(".", 1)[1] for o in OPTIONS}),
    "path_template",
    "enabled",
    "after",
    "grace",
    "bogus",
]
toml_value = st.one_of(
    st.integers(-10, 10**6),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=30).map(json.dumps),
    st.just("[1, 2]"),
    st.just('"30d"'),
    st.just('"{prefix}/{group}"'),
    st.just("{a = 1}"),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(st.tuples(st.sampled_from(SECTIONS), st.sampled_from(KEYS), toml_value), max_size=6),
    st.text(max_size=40),
)
def test_generated_config_files(
    tmp_path: Path, recorder: Recorder, entries: list[tuple[str, str, str]], junk: str
) -> None:
    """Generated TOML (valid and not): settings load, or one ConfigError naming the file."""
    text = "".join(f"[{section}]\n{key} = {value}\n" for section, key, value in entries) + junk
    path = tmp_path / "generated.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        loaded = load(path=str(path), environ={})
        loaded.rules  # noqa: B018 - fully built
        ok = True
    except ConfigError as exc:
        ok = str(path) in str(exc) and "\n" not in exc.message
    recorder.trial("bad input", "generated config files (hypothesis)", survived=ok)
    assert ok


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=60), max_size=8))
def test_generated_environment(env: dict[str, str]) -> None:
    """Any environment: settings load (and ZPA settings build), or a ConfigError; nothing else."""
    try:
        load(path=None, environ=env).zpa()
    except ConfigError as exc:
        assert "\n" not in exc.message


json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
key_fields = [
    "id",
    "name",
    "provisioningKey",
    "maxUsage",
    "usageCount",
    "enabled",
    "zcomponentId",
    "zcomponentName",
    "enrollmentCertId",
    "creationTime",
    "modifiedTime",
    "microtenantId",
]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(key_fields), json_scalar))
def test_generated_key_objects(raw: dict[str, Any]) -> None:
    """Any key object from ZPA parses into a key or raises a one-line ZPA error."""
    try:
        parse_key(raw, AssociationType.CONNECTOR_GRP)
    except VaultZpaError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            json_scalar,
            lambda inner: st.one_of(
                st.lists(inner, max_size=4),
                st.dictionaries(st.text(max_size=10), inner, max_size=4),
            ),
            max_leaves=10,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_generated_listing_bodies(body: bytes) -> None:
    """Any listing body: keys, or a ZPA error (never another exception, never a partial list
    taken as complete)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/signin":
            return httpx.Response(200, json={"access_token": "t", "expires_in": "3600"})
        return httpx.Response(200, content=body)

    client = ZpaClient(
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        auth=LegacyAuth("http://zpa.test/signin", "id", Secret("secret-x")),
        base_url="http://zpa.test",
        customer_id="1",
        oneapi=False,
        retry=RetryPolicy(budget=0.01, base=0.001, cap=0.001, max_attempts=1),
    )
    try:
        client.list_provisioning_keys(AssociationType.CONNECTOR_GRP)
    except VaultZpaError as exc:
        assert "\n" not in str(exc)
    finally:
        client.close()


HOSTILE = [
    "../../etc/passwd",
    "a/b",
    "a b",
    "%2F..%2F",
    "\u202eevil",
    "ü-Gruppe",
    "..",
    ".",
    "",
    "_vault-zpa",
    "x" * 10_000,
    "tab\there",
    "nul\x00byte",
    "CON",
    "-",
]


def test_hostile_group_names_end_to_end(vault: Vault, recorder: Recorder) -> None:
    """Groups with hostile names: every path lands under the prefix; names whose slugs collide
    after losing characters move to `<slug>-<group id>`; a true collision (two groups of one
    name) is a conflict for both and neither is written; the rest sync."""
    with ZpaSimulator(seed=50, connector_groups=0, service_edge_groups=0, rate_limits=False) as sim:
        for name in [*HOSTILE, "twin", "twin"]:
            group = sim.add_group("CONNECTOR_GRP", name)
            sim.add_key("CONNECTOR_GRP", group["id"], name=f"k-{group['id']}")
        result = run_cli("sync", "--output", "json", env=clean_env(sim.env(), vault.env))
        report = json.loads(result.stdout)
        paths = [i["path"] for i in report["items"] if i["path"]]
        assert all(p.startswith("zpa/CONNECTOR_GRP/") for p in paths)
        assert all(".." not in p.split("/") for p in paths)
        conflicts = [i for i in report["items"] if i["action"] == "conflict"]
        assert {i["group_name"] for i in conflicts} == {"twin"}
        moved = {i["group_name"]: i for i in report["items"] if i["group_name"] in ("a/b", "a b")}
        for item in moved.values():  # both slug to a-b
            assert item["path"] == f"zpa/CONNECTOR_GRP/a-b-{item['group_id']}"
        listing = vault.api("LIST", f"{vault.mount}/metadata/zpa/CONNECTOR_GRP").json()
        written = set(listing["data"]["keys"])
        assert "a-b" not in written
        assert "twin" not in written
        assert len(written) == sum(1 for i in report["items"] if i["action"] == "create")
        assert result.returncode == 1  # conflicts are reported as failures
        recorder.trial("bad input", "hostile group names (15, end to end)", survived=True)
