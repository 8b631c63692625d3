"""Nebula public keys as agents send them: PEM of a raw 32-byte X25519 key (``nebula-cert keygen``).

The text is hostile input: it is checked strictly and rewritten in canonical form before it reaches
``nebula-cert``, which never sees what the agent sent.
"""

from __future__ import annotations

import base64
import binascii
import re

from portal.services.errors import InvalidInput

PEM_LABEL = "NEBULA X25519 PUBLIC KEY"
KEY_BYTES = 32
MAX_PEM_CHARS = 512  # a 32-byte key's PEM is 125 characters
_PEM = re.compile(
    rf"-----BEGIN {PEM_LABEL}-----\r?\n(?P<body>[A-Za-z0-9+/=\r\n]{{1,200}})-----END {PEM_LABEL}-----"
)
_ANY_LABEL = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,40})-----")


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of the key in ``text``; InvalidInput (422) saying what is wrong otherwise."""
    if len(text) > MAX_PEM_CHARS:
        raise _invalid(f"is {len(text)} characters; a Nebula public key's PEM is about 125")
    found = _PEM.fullmatch(text.strip())
    if found is None:
        label = _ANY_LABEL.search(text)
        if label is not None and label[1] != PEM_LABEL:
            raise _invalid(f"is a {label[1]!r}, not a {PEM_LABEL!r} (send the .pub of nebula-cert keygen)")
        raise _invalid(f"is not one PEM block '-----BEGIN {PEM_LABEL}-----' … '-----END {PEM_LABEL}-----'")
    body = "".join(found["body"].split())
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("has a body that is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise _invalid(f"holds {len(raw)} bytes; an X25519 public key is {KEY_BYTES}")
    if raw == bytes(KEY_BYTES):
        raise _invalid("is the all-zero X25519 point, which no key pair has")
    return raw


def public_key_pem(raw: bytes) -> str:
    """The canonical PEM of a parsed key, as ``nebula-cert keygen`` writes it."""
    return f"-----BEGIN {PEM_LABEL}-----\n{base64.b64encode(raw).decode()}\n-----END {PEM_LABEL}-----\n"


def _invalid(why: str) -> InvalidInput:
    return InvalidInput(f"public_key {why}.", code="invalid_public_key")
