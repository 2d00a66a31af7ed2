"""Image names and tags, with the grammar of the OCI distribution spec."""

from __future__ import annotations

import re

from portway.oci.digest import Digest
from portway.oci.errors import RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME = 255


def check_name(name: str) -> str:
    if len(name) > MAX_NAME:
        raise RegistryError("NAME_INVALID", f"image name longer than {MAX_NAME} characters")
    if not NAME_RE.match(name):
        raise RegistryError(
            "NAME_INVALID",
            f"invalid image name {name[:100]!r}: lower-case path components of a-z, 0-9 "
            "and single separators (., _, __, -) joined by '/'",
        )
    return name


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise RegistryError("TAG_INVALID", f"invalid tag {tag[:140]!r}")
    return tag


def check_reference(reference: str) -> str:
    """A manifest reference, validated: a digest in canonical form, or a tag."""
    if Digest.is_digest(reference):
        return str(Digest.parse(reference))
    return check_tag(reference)


def lookup_reference(reference: str) -> str:
    """A manifest reference to read or delete by: a digest in canonical form, or a tag. What
    is neither names no manifest, so it is unknown (404), as the OCI distribution spec asks;
    only a push refuses it as invalid (`check_reference`)."""
    try:
        return check_reference(reference)
    except RegistryError:
        raise RegistryError(
            "MANIFEST_UNKNOWN",
            f"manifest {reference[:140]!r} unknown: neither a tag nor a digest",
        ) from None
