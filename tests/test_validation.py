"""Values from outside are checked at the edge (issue 14, items 3, 11, 12): every duration is
finite and bounded, the leader lease never asks Vault for `0s` (= never), and `sync --prune` on
a KV v1 mount is refused before anything is listed or written."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Vault, clean_env, run_cli
from vault_zpa import build
from vault_zpa.config import (
    MAX_DURATION,
    MAX_GRACE,
    MIN_LEASE_PERIOD,
    OPTIONS,
    load,
    parse_duration,
    parse_duration_or_zero,
)
from vault_zpa.errors import ConfigError
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.vault.lease import LeaderLease

DURATION_ENVS = sorted(
    env
    for option in OPTIONS
    if isinstance(option.default, float)
    and option.name not in ("daemon.lease_period",)  # has its own test below
    for env in option.env
)
ABSURD = [
    float("inf"),
    float("-inf"),
    float("nan"),
    "inf",
    "nan",
    "1e400",
    "9" * 400,
    10**400,
    1e12,
    "3000000d",
    "100000w",
    -5,
    "-5s",
    True,
    False,
]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (no usage block, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("value", ABSURD, ids=repr)
def test_parse_duration_refuses_non_finite_negative_and_absurd(value: object) -> None:
    """inf, nan, 1e400, negatives, bools and absurd magnitudes: a ConfigError, never a value."""
    with pytest.raises(ConfigError) as caught:
        parse_duration(value)
    assert "\n" not in str(caught.value)


def test_parse_duration_names_setting_and_value_and_honours_a_tighter_max() -> None:
    """A caller's name and tighter bound appear in the one-line message."""
    with pytest.raises(ConfigError, match=r"^--grace: .*365 days.*'400d'"):
        parse_duration("400d", name="--grace", maximum=MAX_GRACE)
    assert parse_duration("30d", name="--grace", maximum=MAX_GRACE) == 30 * 86400
    assert parse_duration("3650d") == 3650 * 86400  # ten years is still a valid lease
    with pytest.raises(ConfigError, match="at least 5s"):
        parse_duration("900ms", minimum=MIN_LEASE_PERIOD)
    assert parse_duration_or_zero("0m") == 0.0


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.floats(),
        st.integers(min_value=-(10**500), max_value=10**500),
        st.booleans(),
        st.text(max_size=30),
        st.builds(
            lambda n, u: f"{n}{u}",
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True),
                st.integers(min_value=-(10**30), max_value=10**30),
                st.sampled_from(["1e400", "1e-400", "inf", "nan", "-0", "0.0", "١٢", "9" * 320]),
            ),
            st.sampled_from(["", "ms", "s", "m", "h", "d", "w", "y", "S", " s", "1s"]),
        ),
    ),
    st.sampled_from([None, MAX_GRACE, 3600.0]),
)
def test_parse_duration_generated(value: Any, maximum: float | None) -> None:
    """Any input: a finite positive number of seconds within the bound, or a ConfigError."""
    bound = MAX_DURATION if maximum is None else maximum
    try:
        seconds = (
            parse_duration(value) if maximum is None else parse_duration(value, maximum=maximum)
        )
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(seconds, float)
    assert math.isfinite(seconds)
    assert 0 < seconds <= bound


@pytest.mark.parametrize("env", DURATION_ENVS)
@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "3000000d", "-1s", "1" * 400])
def test_every_duration_variable_is_bounded(env: str, value: str) -> None:
    """Every VAULT_ZPA_* duration variable refuses non-finite and absurd values, naming itself."""
    with pytest.raises(ConfigError) as caught:
        load(path=None, environ={env: value})
    message = str(caught.value)
    assert message.startswith(f"{env}: ")
    assert value[:40] in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("[sync]\nlease = inf\n", "[sync] lease"),
        ("[sync]\nlease = nan\n", "[sync] lease"),
        ("[sync]\nlease = 1e400\n", "[sync] lease"),
        ("[daemon]\ninterval = inf\n", "[daemon] interval"),
        ("[daemon]\njitter = nan\n", "[daemon] jitter"),
        ("[vault]\ntimeout = -inf\n", "[vault] timeout"),
        ("[association_type.CONNECTOR_GRP]\nlease = inf\n", "lease"),
        ("[association_type.CONNECTOR_GRP]\nlease = '3000000d'\n", "lease"),
        ("[association_type.CONNECTOR_GRP.rotation]\nafter = nan\n", "after"),
        ("[association_type.CONNECTOR_GRP.rotation]\ngrace = inf\n", "grace"),
        ("[association_type.CONNECTOR_GRP.rotation]\ngrace = '3000000d'\n", "grace"),
        ("[association_type.CONNECTOR_GRP.rotation]\nbackoff = 1e400\n", "backoff"),
        ("[association_type.CONNECTOR_GRP.rotation]\nmax_failures = inf\n", "max_failures"),
        ("[association_type.CONNECTOR_GRP.rotation]\nat_usage_ratio = nan\n", "at_usage_ratio"),
        ("[vault]\nconcurrency = inf\n", "[vault] concurrency"),
        ("[zpa]\nget_limit = nan\n", "[zpa] get_limit"),
    ],
)
def test_toml_non_finite_and_absurd_numbers_are_config_errors(
    tmp_path: Path, body: str, where: str
) -> None:
    """TOML inf/nan/1e400/huge durations: one ConfigError naming the file and the key."""
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load(path=str(path), environ={})
    message = str(caught.value)
    assert str(path) in message
    assert where in message
    assert "\n" not in message


def test_rotate_absurd_grace_exits_2_and_creates_no_key(sim: ZpaSimulator, vault: Vault) -> None:
    """rotate --grace 3000000d: exit 2, one line naming --grace; no key created, Vault untouched."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group = next(iter(sim.groups["CONNECTOR_GRP"].values()))
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    keys_before = {t: set(keys) for t, keys in sim.keys.items()}
    vault_before = vault.metadata(path)
    for grace in ("3000000d", "inf", "nan", "1e400", "366d", "-1h"):
        args = ["--association-type", "CONNECTOR_GRP", "--group", group["name"], "--grace", grace]
        result = run_cli("rotate", *args, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        line = one_line(result)
        assert "--grace" in line
        assert grace in line
        assert {t: set(keys) for t, keys in sim.keys.items()} == keys_before
    after = vault.metadata(path)
    assert after["current_version"] == vault_before["current_version"]
    assert after["custom_metadata"] == vault_before["custom_metadata"]


@pytest.mark.parametrize("interval", ["inf", "nan", "1e400", "3000000d", "0s"])
def test_daemon_absurd_interval_exits_2(sim: ZpaSimulator, vault: Vault, interval: str) -> None:
    """daemon --interval with a non-finite or absurd value: exit 2 at start-up, one line."""
    env = clean_env(sim.env(), vault.env)
    result = run_cli(
        "daemon", "--interval", interval, "--listen", "127.0.0.1:0", env=env, timeout=30
    )
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result)
    assert "--interval" in line
    assert interval in line


@pytest.mark.parametrize("period", ["900ms", "4s", "0.5"])
def test_daemon_refuses_a_lease_period_below_the_minimum(
    sim: ZpaSimulator, vault: Vault, period: str
) -> None:
    """VAULT_ZPA_LEASE_PERIOD below 5s (sub-second became `0s` = never): exit 2, one line."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_LEASE_PERIOD": period})
    try:
        result = run_cli("daemon", "--listen", "127.0.0.1:0", env=env, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon started with VAULT_ZPA_LEASE_PERIOD={period}")
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result)
    assert "VAULT_ZPA_LEASE_PERIOD" in line
    assert period in line
    assert "at least 5s" in line


def test_lease_never_asks_vault_for_zero_seconds(sim: ZpaSimulator, vault: Vault) -> None:
    """A fractional lease period is rounded up to whole seconds on real OpenBao, never `0s`."""
    settings = load(path=None, environ={**sim.env(), **vault.env})
    store = build.kv_store(settings)
    try:
        for prefix, period, expected in (("a", 0.9, "1s"), ("b", 6.5, "7s"), ("c", 30.0, "30s")):
            lease = LeaderLease(store, prefix=prefix, period=period, holder="t")
            assert lease.tick()
            meta = vault.metadata(f"{prefix}/_vault-zpa/leader")
            assert meta["delete_version_after"] == expected
    finally:
        store.close()


def test_prune_on_kv_v1_is_refused_up_front(sim: ZpaSimulator, vault: Vault) -> None:
    """sync --prune on a KV v1 mount: exit 2, one line, before ZPA is listed or Vault written."""
    mount = vault.mount + "-v1"
    vault.api(
        "POST", f"sys/mounts/{mount}", json={"type": "kv", "options": {"version": "1"}}
    ).raise_for_status()
    try:
        env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_MOUNT": mount})
        assert run_cli("sync", env=env).returncode == 0
        group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
        for key_id in [
            k for k, v in sim.keys["CONNECTOR_GRP"].items() if v["zcomponentId"] == group_id
        ]:
            del sim.keys["CONNECTOR_GRP"][key_id]
        other_group_id, other = next(iter(sim.groups["SERVICE_EDGE_GRP"].items()))
        sim.add_key("SERVICE_EDGE_GRP", other_group_id, name="new-while-refused")
        stored = vault.api("GET", f"{mount}/zpa/CONNECTOR_GRP/{group['name']}").json()["data"]
        sim.reset_stats()
        for args in (["--prune"], ["--prune", "--dry-run"]):
            result = run_cli("sync", *args, env=env)
            assert result.returncode == 2, result.stdout + result.stderr
            line = one_line(result)
            assert "--prune" in line
            assert "KV v1" in line
            assert sum(sim.stats.requests.values()) == 0  # ZPA was not even listed
        still = vault.api("GET", f"{mount}/zpa/CONNECTOR_GRP/{group['name']}").json()["data"]
        assert still == stored
        edge = vault.api("GET", f"{mount}/zpa/SERVICE_EDGE_GRP/{other['name']}").json()["data"]
        assert edge["key_name"] != "new-while-refused"  # nothing written for the new key either
    finally:
        vault.api("DELETE", f"sys/mounts/{mount}")


INT_ENVS = sorted(
    env
    for option in OPTIONS
    if isinstance(option.default, int) and not isinstance(option.default, bool)
    for env in option.env
)


@pytest.mark.parametrize("env", INT_ENVS)
@pytest.mark.parametrize("value", ["inf", "nan", "1e3", "true", "2.0", "١٦", "1_6", "9" * 5000])
def test_every_whole_number_variable_takes_ascii_digits_only(env: str, value: str) -> None:
    """Counts from the environment: no inf/nan/bools/floats, no Unicode digits or underscores."""
    with pytest.raises(ConfigError) as caught:
        load(path=None, environ={env: value})
    assert str(caught.value).startswith(f"{env}: must be a whole number")
