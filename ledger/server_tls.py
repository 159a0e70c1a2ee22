"""Server-side TLS for Steward's gRPC servers (the ledger's, the controller's): one set of rules.

Plaintext is for loopback, or asked for by name (``--insecure-plaintext``) anywhere else; TLS
needs a certificate and its key; a client CA means mutual TLS, with required client
certificates unless the caller says otherwise. Each refusal is a ConfigError naming the flag.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from ledger.access import is_loopback
from ledger.errors import ConfigError


def server_credentials(
    listen: str,
    *,
    tls_cert: str | Path | None,
    tls_key: str | Path | None,
    client_ca: str | Path | None,
    require_client_cert: bool,
    insecure_plaintext: bool,
) -> grpc.ServerCredentials | None:
    """The credentials to serve ``listen`` with; None for plaintext (loopback or asked for)."""
    if tls_cert is None and tls_key is None:
        if client_ca is not None or require_client_cert:
            raise ConfigError("mutual TLS needs TLS: give tls_cert and tls_key too")
        if not is_loopback(listen) and not insecure_plaintext:
            raise ConfigError(
                f"plaintext on {listen}, an address other machines can reach: serve TLS "
                "(--tls-cert, --tls-key) or say --insecure-plaintext"
            )
        return None
    if tls_cert is None or tls_key is None:
        raise ConfigError("TLS needs both tls_cert and tls_key")
    if require_client_cert and client_ca is None:
        raise ConfigError(
            "require_client_cert needs client_ca, the CA that signs client certificates"
        )
    pair = (Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=Path(client_ca).read_bytes() if client_ca is not None else None,  # type: ignore[arg-type]
        require_client_auth=require_client_cert,
    )
