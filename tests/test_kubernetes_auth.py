"""Kubernetes auth against real OpenBao, with a stand-in for the Kubernetes TokenReview API
(no cluster here): the service-account token file is re-read at every login."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Vault
from vault_zpa.vault.auth import KubernetesAuth
from vault_zpa.vault.connection import VaultConnection
from vault_zpa.vault.kv import HvacKvStore

NAMESPACE, ACCOUNT = "zpa", "vault-zpa"
# Like a cluster's service-account issuer (the stand-in API server is what vouches for tokens).
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())


class TokenReviews:
    """POST /apis/authentication.k8s.io/v1/tokenreviews: accepts tokens it issued."""

    def __init__(self) -> None:
        self.valid: set[str] = set()
        self.reviews: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                token = body["spec"]["token"]
                owner.reviews.append(token)
                status: dict[str, Any] = {"authenticated": token in owner.valid}
                if status["authenticated"]:
                    status["user"] = {
                        "username": f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}",
                        "uid": "1234-5678",
                        "groups": ["system:serviceaccounts"],
                    }
                out = json.dumps(
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "status": status,
                    }
                ).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def issue(self) -> str:
        now = int(time.time())
        token = jwt.encode(
            {
                "iss": "kubernetes/serviceaccount",
                "sub": f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}",
                "kubernetes.io/serviceaccount/namespace": NAMESPACE,
                "kubernetes.io/serviceaccount/service-account.name": ACCOUNT,
                "kubernetes.io/serviceaccount/service-account.uid": "1234-5678",
                "iat": now,
                "exp": now + 3600,
            },
            SIGNING_KEY,
            algorithm="ES256",
        )
        self.valid.add(token)
        return token


def self_signed_ca() -> str:
    """OpenBao insists on a CA certificate; the stand-in API server speaks plain http."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-k8s-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def reviews() -> Iterator[TokenReviews]:
    server = TokenReviews()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_kubernetes_login_rereads_the_token_file(
    vault: Vault, reviews: TokenReviews, tmp_path: Path
) -> None:
    """Login with the projected token; after the file rotates (old token revoked), the next
    login uses the new one and the session keeps working."""
    mount = f"k8s-{vault.mount}"
    vault.api("POST", f"sys/auth/{mount}", json={"type": "kubernetes"}).raise_for_status()
    vault.api(
        "POST",
        f"auth/{mount}/config",
        json={
            "kubernetes_host": reviews.url,
            "disable_local_ca_jwt": True,
            "kubernetes_ca_cert": self_signed_ca(),
            "token_reviewer_jwt": "reviewer-token",
        },
    ).raise_for_status()
    policy = f'path "{vault.mount}/*" {{ capabilities = ["create","read","update","list"] }}'
    vault.api("PUT", "sys/policies/acl/zpa-k8s", json={"policy": policy}).raise_for_status()
    vault.api(
        "POST",
        f"auth/{mount}/role/vault-zpa",
        json={
            "bound_service_account_names": [ACCOUNT],
            "bound_service_account_namespaces": [NAMESPACE],
            "token_policies": ["zpa-k8s"],
            "token_ttl": "2s",
            "token_max_ttl": "2s",
        },
    ).raise_for_status()
    token_file = tmp_path / "token"
    first = reviews.issue()
    token_file.write_text(first)
    conn = VaultConnection(
        addr=vault.server.addr, auth=KubernetesAuth("vault-zpa", str(token_file), mount)
    )
    store = HvacKvStore(conn, mount=vault.mount)
    try:
        store.write("zpa/k8s", {"k": "v"}, cas=0, custom_metadata={"managed_by": "vault-zpa"})
        reviews.valid.discard(first)  # the kubelet rotated the projected token
        token_file.write_text(reviews.issue())
        time.sleep(2.5)
        assert store.read("zpa/k8s") is not None
    finally:
        store.close()
    assert conn.tokens.logins == 2
    assert reviews.reviews[-1] != first
    vault.api("DELETE", f"sys/auth/{mount}")
