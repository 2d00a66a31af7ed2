"""Client for remote v2 registries, as proxy repositories use them."""

from .breaker import BreakerState, UpstreamBreaker
from .challenge import Challenge, parse_challenges
from .client import UpstreamRegistry
from .content import (
    PingResult,
    SearchPage,
    TagPage,
    UpstreamBlob,
    UpstreamManifest,
    UpstreamManifestInfo,
)
from .errors import (
    UpstreamBlockedError,
    UpstreamDigestMismatchError,
    UpstreamError,
    UpstreamNotFoundError,
    UpstreamRateLimitedError,
    UpstreamServerError,
    UpstreamTimeoutError,
    UpstreamTruncatedError,
    UpstreamUnauthorizedError,
    UpstreamUnreachableError,
)
from .singleflight import SharedDownloads, SingleFlight, Spool, SpoolReader

__all__ = [
    "BreakerState",
    "Challenge",
    "PingResult",
    "SearchPage",
    "SharedDownloads",
    "SingleFlight",
    "Spool",
    "SpoolReader",
    "TagPage",
    "UpstreamBlob",
    "UpstreamBlockedError",
    "UpstreamBreaker",
    "UpstreamDigestMismatchError",
    "UpstreamError",
    "UpstreamManifest",
    "UpstreamManifestInfo",
    "UpstreamNotFoundError",
    "UpstreamRateLimitedError",
    "UpstreamRegistry",
    "UpstreamServerError",
    "UpstreamTimeoutError",
    "UpstreamTruncatedError",
    "UpstreamUnauthorizedError",
    "UpstreamUnreachableError",
    "parse_challenges",
]
