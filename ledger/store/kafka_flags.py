"""The ``--kafka-*`` security flags of the programs that open a Kafka store, and their secrets.

The controller adds them with `add_security_arguments` and turns them into `KafkaStoreConfig`
fields with `security_from_args`; a secret is never a flag, only the name of the environment
variable that holds it (`secret_from_env`).
"""

from __future__ import annotations

import os
from typing import Any

from ledger.errors import ConfigError


def add_security_arguments(group: Any) -> None:
    """The ``--kafka-*`` security flags (as the ledger server's), on an argparse group.

    Secrets are never flags: ``--kafka-sasl-password-env`` and ``--kafka-ssl-password-env``
    name the environment variables that hold them.
    """
    group.add_argument(
        "--kafka-security-protocol",
        default="PLAINTEXT",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    group.add_argument("--kafka-sasl-mechanism", help="e.g. SCRAM-SHA-512")
    group.add_argument("--kafka-sasl-username")
    group.add_argument(
        "--kafka-sasl-password-env",
        metavar="VAR",
        help="environment variable holding the SASL password (never a flag)",
    )
    group.add_argument("--kafka-ssl-cafile", help="CA bundle that signs the brokers' certificates")
    group.add_argument("--kafka-ssl-certfile", help="client certificate (PEM), for mutual TLS")
    group.add_argument("--kafka-ssl-keyfile", help="client private key (PEM)")
    group.add_argument(
        "--kafka-ssl-password-env",
        metavar="VAR",
        help="environment variable holding the client key's password",
    )


def security_from_args(args: Any) -> dict[str, Any]:
    """`KafkaStoreConfig` security fields from `add_security_arguments` flags (secrets read
    from the named environment variables; ConfigError naming a variable that is not set)."""
    return {
        "security_protocol": args.kafka_security_protocol,
        "sasl_mechanism": args.kafka_sasl_mechanism,
        "sasl_plain_username": args.kafka_sasl_username,
        "sasl_plain_password": secret_from_env(
            args.kafka_sasl_password_env, "the Kafka SASL password"
        ),
        "ssl_cafile": args.kafka_ssl_cafile,
        "ssl_certfile": args.kafka_ssl_certfile,
        "ssl_keyfile": args.kafka_ssl_keyfile,
        "ssl_password": secret_from_env(
            args.kafka_ssl_password_env, "the Kafka client key password"
        ),
    }


def secret_from_env(var: str | None, what: str) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(f"environment variable {var} ({what}) is not set")
    return value
