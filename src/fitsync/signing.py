"""Ed25519 signatures of release manifests.

A release author signs the manifest once; anyone holding the public key can
then trust a mirror of the release obtained from any host: the manifest's
signature proves the list of files and their BLAKE3 digests, and every file
is checked against that list.

The signature is detached, in ``<manifest>.sig`` next to the manifest: one
JSON object on one line (documented in docs/release-manifests.md)::

  {"format": "fitsync-manifest-signature", "version": 1, "algorithm": "ed25519",
   "key_id": "<16 hex>", "manifest_size": N, "manifest_blake3": "<64 hex>",
   "signature": "<base64 of 64 bytes>"}

What is signed is ``b"fitsync-manifest-signature v1\\0"`` + the manifest's
size as 8 bytes big-endian + its 32-byte BLAKE3 digest. The prefix keeps a
manifest signature from ever being valid as a signature of anything else
made with the same key; hashing first lets a manifest of any size be signed
without holding it twice. ``manifest_size`` and ``manifest_blake3`` are
repeated in the clear only to explain a refusal ("modified after signing"
vs "signed by another key"); they are never trusted.

Keys: the private key is PKCS#8 PEM (file mode 0600), the public key a
SubjectPublicKeyInfo PEM, both readable by OpenSSL. OpenSSH Ed25519 keys
(``ssh-ed25519 ...`` public lines, ``-----BEGIN OPENSSH PRIVATE KEY-----``)
are accepted too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
import tempfile

import blake3

from fitsync.errors import BadInput, NotFound, VerificationFailed
from fitsync.formats.manifest import write_atomically

SIGNATURE_SUFFIX = ".sig"
SIGNATURE_FORMAT = "fitsync-manifest-signature"
SIGNATURE_VERSION = 1
ALGORITHM = "ed25519"
_DOMAIN = b"fitsync-manifest-signature v1\x00"
MAX_SIGNATURE_FILE = 64 << 10


class SignatureRejected(BadInput):
    """A manifest whose signature does not verify with the trusted key (exit 2:
    the manifest is not to be used)."""


class NotInManifest(VerificationFailed):
    """A data file that does not match the verified manifest (exit 3)."""

    transient = False  # downloading it again yields the same bytes


# -- keys ---------------------------------------------------------------------

def generate_key_pair(keyfile: str, *, force: bool = False) -> tuple[str, str]:
    """Write a new Ed25519 key pair: ``keyfile`` (private, mode 0600) and
    ``keyfile.pub``. Refuses to overwrite existing files unless ``force``.
    Returns (private path, public path)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pubfile = keyfile + ".pub"
    if not force:
        for path in (keyfile, pubfile):
            if os.path.lexists(path):
                raise BadInput(f"{path} already exists; choose another name or pass --force to replace it")
    directory = os.path.dirname(os.path.abspath(keyfile))
    if not os.path.isdir(directory):
        raise NotFound(f"directory {directory} does not exist; create it first")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_private(keyfile, private_pem)
    write_atomically(pubfile, lambda out: out.write(public_pem.decode("ascii")))
    return keyfile, pubfile


def load_private_key(path: str):
    """The Ed25519 private key in ``path`` (PKCS#8 PEM or OpenSSH)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path, "signing key")
    key = None
    for loader in (serialization.load_pem_private_key, serialization.load_ssh_private_key):
        try:
            key = loader(data, password=None)
            break
        except TypeError:
            raise BadInput(f"signing key {path} is encrypted; fitsync needs an unencrypted key file") from None
        except (ValueError, binascii.Error, UnsupportedAlgorithm):
            continue
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"{path} is not an Ed25519 private key; make one with 'fitsync keygen KEYFILE'")
    return key


def load_public_key(path: str):
    """The Ed25519 public key in ``path`` (PEM or an ``ssh-ed25519`` line)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        # A private key holds its public half; accept it but never echo it.
        return load_private_key(path).public_key()
    key = None
    for loader in (serialization.load_pem_public_key, serialization.load_ssh_public_key):
        try:
            key = loader(data)
            break
        except (ValueError, binascii.Error, UnsupportedAlgorithm):
            continue
    if isinstance(key, Ed25519PrivateKey):  # pragma: no cover - loaders above return public keys
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise BadInput(f"{path} is not an Ed25519 public key (expected the KEYFILE.pub written by fitsync keygen)")
    return key


def key_id(public_key) -> str:
    """A short, stable name of a public key: 16 hex digits of SHA-256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_key_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIGNATURE_FILE + 1)
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"{what} {path} is a directory, not a key file") from None
    except PermissionError:
        raise BadInput(f"{what} {path} is not readable; check its permissions") from None
    if len(data) > MAX_SIGNATURE_FILE:
        raise BadInput(f"{what} {path} is too large to be a key file")
    return data


# -- signing and verifying bytes ----------------------------------------------

def _signed_message(size: int, digest: bytes) -> bytes:
    return _DOMAIN + struct.pack(">Q", size) + digest


def sign_manifest_bytes(manifest: bytes, private_key) -> bytes:
    """The detached signature file's content for ``manifest``."""
    digest = blake3.blake3(manifest).digest()
    signature = private_key.sign(_signed_message(len(manifest), digest))
    record = {
        "format": SIGNATURE_FORMAT,
        "version": SIGNATURE_VERSION,
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "manifest_size": len(manifest),
        "manifest_blake3": digest.hex(),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return (json.dumps(record, sort_keys=True) + "\n").encode("ascii")


def parse_signature_file(data: bytes, name: str) -> dict:
    """The fields of a detached signature file; BadInput when malformed."""
    if len(data) > MAX_SIGNATURE_FILE:
        raise SignatureRejected(f"signature {name} is too large to be a fitsync signature")
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SignatureRejected(f"signature {name} is not a fitsync signature file (not JSON)") from None
    if not isinstance(record, dict) or record.get("format") != SIGNATURE_FORMAT:
        raise SignatureRejected(f"signature {name} is not a fitsync signature file")
    if record.get("version") != SIGNATURE_VERSION or record.get("algorithm") != ALGORITHM:
        raise SignatureRejected(
            f"signature {name} has version {record.get('version')!r} / algorithm {record.get('algorithm')!r}; "
            f"this fitsync verifies version {SIGNATURE_VERSION} {ALGORITHM}; upgrade fitsync"
        )
    try:
        record["signature_bytes"] = base64.b64decode(record.get("signature", ""), validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise SignatureRejected(f"signature {name}: 'signature' is not base64") from None
    if len(record["signature_bytes"]) != 64:
        raise SignatureRejected(f"signature {name}: an Ed25519 signature is 64 bytes")
    return record


def verify_manifest_bytes(manifest: bytes, signature_file: bytes, public_key, *,
                          name: str = "manifest", key_name: str = "the trusted key") -> None:
    """Return if ``signature_file`` is a valid signature of ``manifest`` by
    ``public_key``; raise SignatureRejected saying why otherwise."""
    from cryptography.exceptions import InvalidSignature

    record = parse_signature_file(signature_file, name + SIGNATURE_SUFFIX)
    digest = blake3.blake3(manifest).digest()
    try:
        public_key.verify(record["signature_bytes"], _signed_message(len(manifest), digest))
        return
    except InvalidSignature:
        pass
    trusted_id = key_id(public_key)
    if record.get("key_id") != trusted_id:
        raise SignatureRejected(
            f"manifest {name} is signed by another key (key id {record.get('key_id')}), "
            f"not by {key_name} (key id {trusted_id}); refusing it"
        )
    if record.get("manifest_blake3") != digest.hex() or record.get("manifest_size") != len(manifest):
        raise SignatureRejected(
            f"manifest {name} was modified after it was signed (its BLAKE3 does not match the signed one); refusing it"
        )
    raise SignatureRejected(f"signature of manifest {name} does not verify with {key_name}; refusing the manifest")


# -- files ---------------------------------------------------------------------

def signature_path(manifest_path: str) -> str:
    return manifest_path + SIGNATURE_SUFFIX


def sign_manifest_file(manifest_path: str, keyfile: str) -> str:
    """Sign ``manifest_path`` with the private key in ``keyfile``; write the
    detached signature atomically to ``manifest_path + ".sig"`` and return its path."""
    key = load_private_key(keyfile)
    manifest = _read_manifest_file(manifest_path)
    out = signature_path(manifest_path)
    signature = sign_manifest_bytes(manifest, key).decode("ascii")
    write_atomically(out, lambda stream: stream.write(signature))
    return out


def verify_manifest_file(manifest_path: str, pubkey_path: str, sig_path: str | None = None) -> None:
    """Return if the manifest's detached signature verifies with the public
    key in ``pubkey_path``; raise SignatureRejected (or NotFound) otherwise."""
    key = load_public_key(pubkey_path)
    manifest = _read_manifest_file(manifest_path)
    sig_path = sig_path or signature_path(manifest_path)
    try:
        with open(sig_path, "rb") as f:
            signature = f.read(MAX_SIGNATURE_FILE + 1)
    except FileNotFoundError:
        raise SignatureRejected(
            f"manifest {manifest_path} has no signature ({sig_path} is missing) but --verify-key was given; "
            "refusing it"
        ) from None
    verify_manifest_bytes(manifest, signature, key, name=manifest_path, key_name=pubkey_path)


def check_file_digest(path: str, actual_blake3: str, manifest_blake3: str) -> None:
    """Refuse a data file whose BLAKE3 differs from the verified manifest's."""
    if actual_blake3 != manifest_blake3:
        raise NotInManifest(
            f"{path} does not match the signed manifest (BLAKE3 {actual_blake3[:16]}... != "
            f"{manifest_blake3[:16]}...); refusing it"
        )


def _read_manifest_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NotFound(f"manifest {path} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"manifest {path} is a directory") from None


def _write_private(path: str, data: bytes) -> None:
    """Write a private key atomically; the file is 0600 before any byte is in it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fitsync-key-", dir=directory)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
