"""Tables of the metadata store. One MetaData for every table, whatever module declares it."""

from __future__ import annotations

from sqlalchemy import MetaData

metadata = MetaData()
