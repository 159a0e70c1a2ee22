"""`steward keys new` and `steward keys show`: Ed25519 key files, and the principal a public
key file names."""

from __future__ import annotations

import argparse
from pathlib import Path

from ledger.cli.common import PRINCIPAL_LABEL, CliError, key_passphrase, load_key, principal_of
from ledger.keys import PrivateKey, PublicKey


def cmd_keys_new(args: argparse.Namespace) -> int:
    key = PrivateKey.generate()
    path = Path(args.file)
    passphrase = key_passphrase(args) if args.encrypt else None
    if args.encrypt and not passphrase:
        raise CliError(f"--encrypt needs a passphrase in ${args.passphrase_env}")
    try:
        key.save(path, passphrase)
    except FileExistsError as exc:
        raise CliError(f"{path} exists; refusing to overwrite a key") from exc
    public_path = path.with_name(path.name.removesuffix(".pem") + ".pub.pem")
    label = f"{PRINCIPAL_LABEL}{args.principal}\n".encode() if args.principal else b""
    public_path.write_bytes(label + key.public.to_pem())
    print(f"private key: {path} (mode 600{', encrypted' if passphrase else ''})")
    print(f"public key:  {public_path}")
    if args.principal:
        print(f"principal:   {args.principal}")
    print(f"key id:      {key.key_id.hex()}")
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    data = Path(args.file).read_bytes()
    public = (
        load_key(args.file, args).public if b"PRIVATE KEY" in data else PublicKey.from_pem(data)
    )
    print(f"key id: {public.key_id_hex}")
    principal = None if b"PRIVATE KEY" in data else principal_of(args.file)
    if principal:
        print(f"principal: {principal}")
    print(public.to_pem().decode(), end="")
    return 0
