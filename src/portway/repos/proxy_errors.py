"""What a proxy repository tells a client when its upstream did not give what was asked.

A manifest that is not cached and could not be fetched is answered 404 MANIFEST_UNKNOWN whose
message says why: docker, podman and skopeo print the message of a 4xx answer, and only
"received unexpected HTTP status: 502 Bad Gateway" for a 5xx one (ADR 0011). A rate limit
stays 429 (clients print it too, and it carries Retry-After). Blobs, tag lists and search
keep their 5xx: a client pulling layers retries those.
"""

from __future__ import annotations

from portway.oci.errors import RegistryError
from portway.upstream.errors import UpstreamError

# How a group's answer names what happened at a proxy member's upstream.
_WORDS = {
    "unreachable": "unreachable",
    "timeout": "timed out",
    "server_error": "failed",
    "rate_limited": "limits our requests",
    "unauthorized": "refused our credentials",
    "digest_mismatch": "sent corrupted content",
    "blocked": "blocked",
}


class UpstreamProblem(RegistryError):
    """A proxy repository's upstream failed (as opposed to answering "no such thing");
    `outcome` says so in a few words, e.g. for a group that lists what each member did."""

    def __init__(self, code: str, message: str, outcome: str, *, status: int | None = None):
        super().__init__(code, message, status=status)
        self.outcome = outcome


def outcome_of(err: UpstreamError, remote: str) -> str:
    """`upstream URL unreachable (cannot connect: Connection refused)`."""
    return f"upstream {remote} {_WORDS.get(err.kind, err.kind)} ({err.problem})"


def manifest_unavailable(err: UpstreamError, repository: str, remote: str) -> RegistryError:
    """A manifest neither cached nor fetched because the upstream failed."""
    outcome = outcome_of(err, remote)
    if err.kind == "rate_limited":
        return UpstreamProblem(
            "TOOMANYREQUESTS", f"proxy repository {repository!r}: {outcome}", outcome
        )
    return UpstreamProblem("MANIFEST_UNKNOWN", f"not cached in {repository}; {outcome}", outcome)


def unusable_manifest(problem: str, repository: str, remote: str) -> RegistryError:
    outcome = f"upstream {remote} sent an unusable manifest ({problem})"
    return UpstreamProblem("MANIFEST_UNKNOWN", f"not cached in {repository}; {outcome}", outcome)


def upstream_unavailable(err: UpstreamError, repository: str, remote: str) -> RegistryError:
    """A blob, tag list or search the upstream failed to give: 502 (504 on a timeout, 429 on
    a rate limit), naming the repository and the problem."""
    if err.kind == "not_found":
        return RegistryError("MANIFEST_UNKNOWN", f"not found upstream: {err.problem}")
    outcome = outcome_of(err, remote)
    if err.kind == "rate_limited":
        code, status = "TOOMANYREQUESTS", 429
    else:
        code, status = "UPSTREAM_UNAVAILABLE", 504 if err.kind == "timeout" else 502
    return UpstreamProblem(
        code, f"proxy repository {repository!r}: {outcome}", outcome, status=status
    )
