"""botocore's data files (the S3 service model, the endpoint tables), loaded once a process.

Each botocore session loads and keeps its own copy of them: about 11 MiB of Python objects
for S3 (endpoints.json alone is 7 MiB). A worker has two sessions, the event loop's
(aiobotocore, storage/s3.py) and the health thread's (botocore, observe/health.py); made
with `share_data`, both read one copy. The data is only read once loaded, so sharing it
across sessions is what one session with several clients does anyway.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from botocore.loaders import Loader
    from botocore.session import Session

SessionT = TypeVar("SessionT", bound="Session")


@functools.cache
def _loader(data_path: str | None) -> Loader:
    from botocore.loaders import create_loader

    return create_loader(data_path)


def share_data(session: SessionT) -> SessionT:
    """`session`, reading botocore's data through the process's one loader (per
    `AWS_DATA_PATH`, which the session's own loader would have searched)."""
    data_path = session.get_config_variable("data_path")
    session.register_component("data_loader", _loader(data_path))
    return session
