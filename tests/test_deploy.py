"""Deployment files, checked as far as this machine allows (no Docker engine, no Kubernetes):
parsed, hardened, and referring only to commands and settings that exist."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import yaml

from tests.conftest import ROOT
from vault_zpa.cli import cli
from vault_zpa.config import OPTIONS

KNOWN_ENV = {env for option in OPTIONS for env in option.env} | {
    "VAULT_ZPA_CONFIG",
    "VAULT_DEV_ROOT_TOKEN_ID",
    "ZPA_CLIENT_SECRET_FILE",
    "VAULT_ZPA_SIMULATOR_CLIENT_ID",
    "VAULT_ZPA_SIMULATOR_CLIENT_SECRET",
    "VAULT_ZPA_SIMULATOR_CUSTOMER_ID",
}
FILES = [
    "Dockerfile",
    "docker-compose.yml",
    "deploy/systemd/vault-zpa.service",
    "deploy/kubernetes/vault-zpa.yaml",
    "examples/cloud-init/user-data.sh",
    "examples/vault-agent/agent.hcl",
    "README.md",
]


def commands() -> set[str]:
    names = set(cli.commands)  # type: ignore[attr-defined]
    return names


def test_every_env_name_and_command_in_deploy_files_exists() -> None:
    """No file tells users to set a variable vault-zpa does not read, or run a missing command
    (the README is checked in its code blocks)."""
    for name in FILES:
        text = (ROOT / name).read_text()
        if name.endswith(".md"):
            text = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, re.S))
        else:  # comments are prose
            text = "\n".join(
                line for line in text.splitlines() if not line.lstrip().startswith("#")
            )
        for env in re.findall(r"\b((?:VAULT_ZPA|ZPA|ZSCALER)_[A-Z0-9_]+)\b", text):
            assert env in KNOWN_ENV, f"{name}: {env} is not a setting vault-zpa reads"
        pattern = r"(?:^|[ \t/\[\"])vault-zpa(?:[ \t]*\\\n[ \t]*|[ \t]+)([a-z][a-z-]*)"
        for command in re.findall(pattern, text, re.M):
            assert command in commands(), f"{name}: unknown command {command!r}"


def test_compose_has_vault_simulator_and_daemon_with_healthchecks() -> None:
    """docker-compose.yml: official Vault image in dev mode, simulator, daemon from our
    Dockerfile, each with a healthcheck; the daemon waits for a healthy Vault."""
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert set(services) == {"vault", "vault-zpa", "zpa-simulator"}
    assert services["vault"]["image"].startswith("hashicorp/vault:")
    assert "-dev" in services["vault"]["command"]
    assert services["vault-zpa"]["build"] == "."
    assert services["vault-zpa"]["command"][0] == "daemon"
    assert services["zpa-simulator"]["command"][0] == "simulator"
    assert services["vault-zpa"]["depends_on"]["vault"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    daemon_env = services["vault-zpa"]["environment"]
    sim_env = services["zpa-simulator"]["environment"]
    for key in ("ZPA_CLIENT_ID", "ZPA_CLIENT_SECRET", "ZPA_CUSTOMER_ID"):
        assert daemon_env[key] == sim_env[f"VAULT_ZPA_SIMULATOR_{key[4:]}"]
    assert daemon_env["ZPA_BASE_URL"].startswith("http://127.0.0.1:")


def test_dockerfile_is_slim_non_root_and_secret_free() -> None:
    """Slim base, a numeric non-root USER, vault-zpa as entrypoint, no secret in ENV/ARG."""
    text = (ROOT / "Dockerfile").read_text()
    assert all(
        line.split()[1].endswith("-slim") or " AS " in line
        for line in text.splitlines()
        if line.startswith("FROM")
    )
    [user] = re.findall(r"^USER (\S+)$", text, re.M)
    assert user.split(":")[0].isdigit()
    assert user.split(":")[0] != "0"
    assert 'ENTRYPOINT ["vault-zpa"]' in text
    assert not re.search(r"^(ENV|ARG)\b.*(TOKEN|SECRET|PASSWORD|KEY)", text, re.M)


def test_systemd_unit_is_hardened() -> None:
    """NoNewPrivileges, a read-only system, no capabilities, secrets via LoadCredential."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((ROOT / "deploy/systemd/vault-zpa.service").read_text())
    service = parser["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert "vault-zpa daemon" in service["ExecStart"]
    assert service["User"] == "vault-zpa"
    assert "LoadCredential" in service
    assert "ReadOnlyPaths" in service


def test_kubernetes_manifests() -> None:
    """Two replicas, Kubernetes auth, probes on /healthz and /readyz, the metrics port,
    non-root with a read-only root filesystem."""
    docs = {
        d["kind"]: d
        for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/vault-zpa.yaml").read_text())
    }
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 9850
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    config = docs["ConfigMap"]["data"]
    assert config["VAULT_ZPA_AUTH_METHOD"] == "kubernetes"
    assert docs["Service"]["spec"]["ports"][0]["port"] == 9850
    for name in list(config) + [e["name"] for e in container["env"]]:
        assert name in KNOWN_ENV | {"VAULT_ADDR", "VAULT_CACERT"}, name


def test_examples_fetch_the_path_the_connector_reads() -> None:
    """The cloud-init example stops the service, fetches to the runbook path, starts it."""
    text = (ROOT / "examples/cloud-init/user-data.sh").read_text()
    stop, fetch, start = (
        text.index(s)
        for s in (
            "systemctl stop zpa-connector",
            "vault-zpa fetch",
            "systemctl start zpa-connector",
        )
    )
    assert stop < fetch < start
    assert "/opt/zscaler/var/provision_key" in text
    template = (ROOT / "examples/vault-agent/provision_key.ctmpl").read_text()
    assert ".Data.data.provisioning_key" in template
    assert Path(ROOT / "examples/vault-agent/agent.hcl").read_text().count("0644") == 1
