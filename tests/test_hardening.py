"""Issue 14, items 3 (HTTP), 7, 10 and 12: one slug for sync, fetch and policy render; the
daemon's listener bounded before authentication; `POST /v1/rotate` graces validated at the edge;
`fetch` never reading what sits at `--out`."""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, Vault, Wired, clean_env, run_cli
from vault_zpa import layout
from vault_zpa.daemon.app import Daemon, DaemonConfig
from vault_zpa.masking import Secret
from vault_zpa.testing.zpa_simulator import ZpaSimulator

CG = "CONNECTOR_GRP"


# ---- item 7: one slug ------------------------------------------------------------------------


def _group(sim: ZpaSimulator, name: str) -> tuple[str, str]:
    """A connector group with one key: (group id, key value)."""
    group = sim.add_group(CG, name)
    key = sim.add_key(CG, group["id"], name=f"k-{group['id']}")
    return str(group["id"]), str(key["provisioningKey"])


def _fetch(env: dict[str, str], out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("fetch", "--association-type", CG, "--out", str(out), *args, env=env)


@pytest.fixture
def bare_sim() -> Iterator[ZpaSimulator]:
    with ZpaSimulator(seed=7, connector_groups=0, service_edge_groups=0, rate_limits=False) as s:
        yield s


def test_fetch_of_a_name_without_usable_characters_needs_the_group_id(
    bare_sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """`fetch --group 東京` never reads the secret of the group named "group": it is refused
    (exit 2, pointing at --group-id); with --group-id it gets 東京's own key."""
    _group(bare_sim, "group")
    tokyo_id, tokyo_key = _group(bare_sim, "東京")
    env = clean_env(bare_sim.env(), vault.env)
    synced = run_cli("sync", "--output", "json", env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    paths = {i["group_name"]: i["path"] for i in json.loads(synced.stdout)["items"]}
    assert paths["東京"] == f"zpa/{CG}/group-{tokyo_id}"
    out = tmp_path / "provision_key"
    refused = _fetch(env, out, "--group", "東京")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--group-id" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not out.exists()
    fetched = _fetch(env, out, "--group", "東京", "--group-id", tokyo_id)
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_text() == tokyo_key + "\n"


def test_policy_render_of_a_name_without_usable_characters_needs_the_group_id(
    vault: Vault,
) -> None:
    """`policy render --group 東京` is refused (exit 2) rather than granting `group`'s path;
    with --group-id it grants `group-<id>`, the path sync writes."""
    env = clean_env(vault.env)
    args = ("policy", "render", "--association-type", CG, "--group", "東京")
    refused = run_cli(*args, env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--group-id" in refused.stderr
    assert f'zpa/{CG}/group"' not in refused.stdout
    rendered = run_cli(*args, "--group-id", "4242", env=env)
    assert rendered.returncode == 0, rendered.stderr
    assert f'path "{vault.mount}/data/zpa/{CG}/group-4242"' in rendered.stdout


def test_non_ascii_collisions_resolve_by_group_id_and_true_conflicts_stay(
    bare_sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """ "東京-1" and "大阪-1" both slug to `1`: each lands at `1-<group id>` (a plain "x-1" keeps
    its path), in a full and in a filtered run alike; two groups both named "dup" are still a
    conflict for both; `fetch` finds a moved group with --group-id and never takes the secret of
    the group that kept the plain path."""
    tokyo_id, tokyo_key = _group(bare_sim, "東京-1")
    osaka_id, _ = _group(bare_sim, "大阪-1")
    plain_id, _ = _group(bare_sim, "1")
    _group(bare_sim, "dup")
    _group(bare_sim, "dup")
    env = clean_env(bare_sim.env(), vault.env)
    first = run_cli("sync", "--output", "json", env=env)
    items = json.loads(first.stdout)["items"]
    by_id = {i["group_id"]: i for i in items}
    assert by_id[tokyo_id]["path"] == f"zpa/{CG}/1-{tokyo_id}"
    assert by_id[osaka_id]["path"] == f"zpa/{CG}/1-{osaka_id}"
    assert by_id[plain_id]["path"] == f"zpa/{CG}/1"
    assert {by_id[g]["action"] for g in (tokyo_id, osaka_id, plain_id)} == {"create"}
    dups = [i for i in items if i["group_name"] == "dup"]
    assert [i["action"] for i in dups] == ["conflict", "conflict"]
    assert first.returncode == 1  # the true conflict is reported
    again = json.loads(run_cli("sync", "--output", "json", "-v", env=env).stdout)["items"]
    assert {i["group_id"]: i["path"] for i in again} == {i["group_id"]: i["path"] for i in items}
    assert all(i["action"] in ("unchanged", "conflict") for i in again)
    filtered = run_cli("sync", "--group", "東京-1", "--dry-run", "--output", "json", "-v", env=env)
    [only] = json.loads(filtered.stdout)["items"]
    assert (only["path"], only["action"]) == (f"zpa/{CG}/1-{tokyo_id}", "unchanged")
    out = tmp_path / "provision_key"
    wrong = _fetch(env, out, "--group", "東京-1")
    assert wrong.returncode != 0
    assert "belongs to group '1'" in wrong.stderr
    assert not out.exists()
    mixed = _fetch(env, out, "--group", "東京-1", "--group-id", osaka_id)  # another group's id
    assert mixed.returncode != 0
    assert "not '東京-1'" in mixed.stderr
    assert "name the same group" in mixed.stderr
    assert not out.exists()
    right = _fetch(env, out, "--group", "東京-1", "--group-id", tokyo_id)
    assert right.returncode == 0, right.stderr
    assert out.read_text() == tokyo_key + "\n"
    rendered = run_cli("policy", "render", "--all-groups", "--association-type", CG, env=env)
    assert rendered.returncode == 0, rendered.stderr
    granted = set(re.findall(rf'path "{vault.mount}/data/zpa/{CG}/([^"]+)"', rendered.stdout))
    assert granted == {f"1-{tokyo_id}", f"1-{osaka_id}", "1"}  # exactly sync's paths; no "dup"


names = st.one_of(
    st.sampled_from(["1", "東京-1", "大阪-1", "1-5", "a b", "a/b", "a-b", "東京", "group-5", ".."]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(
    groups=st.lists(st.tuples(names, st.integers(1, 30)), max_size=12, unique_by=lambda g: g[1]),
    order=st.randoms(use_true_random=False),
)
def test_placement_is_deterministic_and_moves_only_lossy_names(
    groups: list[tuple[str, int]], order: object
) -> None:
    """Whatever the order of a listing, every group gets the same path; a name that is its own
    slug keeps its plain path; every path stays under the prefix."""
    refs = [layout.GroupRef(layout.DEFAULT_TEMPLATE, "zpa", CG, n, str(i), None) for n, i in groups]
    placed = dict(zip([r.group_id for r in refs], layout.assign_paths(refs), strict=True))
    shuffled = list(refs)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    again = dict(zip([r.group_id for r in shuffled], layout.assign_paths(shuffled), strict=True))
    assert {k: str(v) for k, v in placed.items()} == {k: str(v) for k, v in again.items()}
    for ref in refs:
        path = placed[ref.group_id]
        assert isinstance(path, str)
        assert path.startswith(f"zpa/{CG}/")
        if not layout.is_lossy(ref.group_name):
            assert path == ref.path()


# ---- item 10: the listener -------------------------------------------------------------------


@pytest.fixture
def listener(wired: Wired) -> Iterator[Callable[..., Daemon]]:
    """A real Daemon in this process (no HA), its HTTP listener on a free loopback port."""
    started: list[Daemon] = []

    def start(**config: object) -> Daemon:
        daemon = Daemon(
            config=DaemonConfig(port=0, jitter=0, interval=3600, **config),  # type: ignore[arg-type]
            zpa=wired.zpa,
            store=wired.store,
            options=wired.options(),
            lease=None,
        )
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.shutdown()


def _status_line(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    ("length", "status"),
    [("-1", b"400"), ("abc", b"400"), ("1e3", b"400"), ("10485760", b"413"), ("65537", b"413")],
)
def test_bad_content_length_is_refused_before_the_body_and_before_auth(
    listener: Callable[..., Daemon], length: str, status: bytes
) -> None:
    """A negative, non-numeric or oversized Content-Length is answered at once (before any body
    byte is read, before the bearer token is checked) and the body is never buffered."""
    d = listener(api_token=Secret("tok"))
    before = _rss()
    with socket.create_connection(("127.0.0.1", d.port), timeout=3) as sock:
        sock.sendall(
            f"POST /v1/sync HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        assert _status_line(sock).split(b" ")[1] == status
        chunk = b"x" * 65536
        try:
            for _ in range(800):  # 50 MiB, if the server were still reading
                sock.sendall(chunk)
        except OSError:
            pass  # the server hung up: what we want
    assert _rss() - before < 16 * 2**20


def test_idle_connections_time_out_and_healthz_answers_beside_fifty_of_them(
    listener: Callable[..., Daemon],
) -> None:
    """An idle connection is closed after the socket timeout; with 50 idle connections open,
    /healthz still answers; connections past the cap get a quick 503, not a thread."""
    d = listener(http_timeout=1.0, max_connections=60)
    idle = [socket.create_connection(("127.0.0.1", d.port), timeout=5) for _ in range(50)]
    try:
        idle[0].sendall(b"GET /healthz HTTP/1.1\r\n")  # half a request, never finished
        started = time.monotonic()
        assert httpx.get(f"http://127.0.0.1:{d.port}/healthz", timeout=2).status_code == 200
        assert idle[1].recv(1) == b""  # closed by the server...
        assert time.monotonic() - started < 4  # ...after about the 1 s timeout
        assert idle[0].recv(4096) == b""  # a half-sent request times out too
    finally:
        for sock in idle:
            sock.close()
    capped = listener(http_timeout=5.0, max_connections=3)
    held = [socket.create_connection(("127.0.0.1", capped.port), timeout=5) for _ in range(3)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", capped.port), timeout=2) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _status_line(extra).split(b" ")[1] == b"503"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"http://127.0.0.1:{capped.port}/healthz", timeout=2).status_code == 200


# ---- item 3 (HTTP half): graces on POST /v1/rotate -------------------------------------------


@pytest.mark.parametrize(
    "grace",
    [1e12, "NaN", "1e400", -1, True, "abc", [], {}, "3000000d", 10**400, 365 * 86400 + 1],
    ids=repr,
)
def test_rotate_refuses_a_grace_that_is_not_a_bounded_duration(
    listener: Callable[..., Daemon], grace: object
) -> None:
    """grace 1e12, NaN, "1e400", negative, bool, non-numbers, 10**400: a 400 with one line,
    never an internal error and never a queued rotation."""
    d = listener()
    if grace == "NaN":
        body = b'{"all_due": true, "grace": NaN}'
    elif isinstance(grace, int) and not isinstance(grace, bool) and grace > 10**300:
        body = b'{"all_due": true, "grace": 1' + b"0" * 400 + b"}"
    else:
        body = json.dumps({"all_due": True, "grace": grace}).encode()
    response = httpx.post(
        f"http://127.0.0.1:{d.port}/v1/rotate",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "grace" in error
    assert "\n" not in error
    assert not d.requests.counts()  # nothing queued


@pytest.mark.parametrize(("grace", "seconds"), [("1h", 3600.0), (90, 90.0), (0, 0.0)], ids=repr)
def test_rotate_accepts_a_duration_or_bounded_seconds(
    listener: Callable[..., Daemon], grace: object, seconds: float
) -> None:
    """A duration string or a finite number of seconds from 0 to 365 days is queued."""
    d = listener()
    response = httpx.post(
        f"http://127.0.0.1:{d.port}/v1/rotate",
        json={"association_type": CG, "groups": ["any"], "grace": grace, "dry_run": True},
        timeout=5,
    )
    assert response.status_code == 202, response.text
    request = d.requests.get(response.json()["id"])
    assert request is not None
    assert request["grace"] == seconds


def test_rotate_refuses_a_deeply_nested_body_with_400(listener: Callable[..., Daemon]) -> None:
    """A body nested past the JSON parser's recursion limit is a 400, not a dropped connection."""
    d = listener()
    body = b"[" * 60000 + b"]" * 60000
    response = httpx.post(f"http://127.0.0.1:{d.port}/v1/rotate", content=body[:65536], timeout=5)
    assert response.status_code == 400


# ---- item 12: fetch never reads --out ---------------------------------------------------------


@pytest.fixture
def synced(sim: ZpaSimulator, vault: Vault) -> tuple[dict[str, str], str, str]:
    """A synced mount: (env, a connector group name, its key)."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups[CG].items()))
    [key] = [k for k in sim.keys[CG].values() if k["zcomponentId"] == group_id]
    return env, str(group["name"]), str(key["provisioningKey"])


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_fetch_never_reads_a_fifo_or_a_link_to_dev_zero_at_out(
    synced: tuple[dict[str, str], str, str], tmp_path: Path
) -> None:
    """A FIFO at --out is refused at once (one line, exit 1, left as it is) instead of hanging
    fetch; a link to /dev/zero is replaced by the key file, never read (1 GiB address-space
    cap on the process)."""
    env, name, key = synced

    def fetch(target: Path) -> subprocess.CompletedProcess[str]:
        argv = ["fetch", "--association-type", CG, "--group", name, "--out", str(target)]
        return subprocess.run(
            [sys.executable, "-m", "vault_zpa", *argv],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            preexec_fn=_limited,
        )

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused = fetch(fifo)
    assert refused.returncode == 1, refused.stderr
    assert "not a regular file" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    link = tmp_path / "link"
    link.symlink_to("/dev/zero")
    replaced = fetch(link)
    assert replaced.returncode == 0, replaced.stderr
    assert not link.is_symlink()
    assert link.read_text() == key + "\n"


def test_fetch_into_an_unwritable_or_missing_directory_is_one_clear_line(
    synced: tuple[dict[str, str], str, str], tmp_path: Path
) -> None:
    """A directory that refuses new files (sysfs) or does not exist: exit 1, one line naming the
    path, no internal error."""
    env, name, _ = synced
    for out in ("/sys/vault-zpa-provision-key", str(tmp_path / "missing" / "provision_key")):
        result = _fetch(env, Path(out), "--group", name)
        assert result.returncode == 1, result.stderr
        assert "internal error" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert str(Path(out).parent) in lines[0]
