"""Make an Ed25519 key pair for signing release manifests.

Usage:
  fitsync keygen KEYFILE [--force] [--quiet]
  fitsync keygen --help

Writes KEYFILE (the private key, PKCS#8 PEM, mode 0600: keep it secret) and
KEYFILE.pub (the public key to publish). Sign a release with
'fitsync manifest ROOT --blocks --output=ROOT/fitsync-manifest.jsonl --sign=KEYFILE';
users check it with 'fitsync mirror URL DST --verify-key=KEYFILE.pub'.

Options:
  --force   Replace existing KEYFILE and KEYFILE.pub.
  --quiet   Print nothing.
"""

from __future__ import annotations

import sys

from fitsync.errors import EXIT_OK


def run(opts: dict) -> int:
    from fitsync.signing import generate_key_pair, key_id, load_public_key

    private, public = generate_key_pair(opts["KEYFILE"], force=bool(opts["--force"]))
    if not opts["--quiet"]:
        ident = key_id(load_public_key(public))
        print(f"wrote private key {private} (keep it secret) and public key {public} (key id {ident})",
              file=sys.stderr)
    return EXIT_OK
