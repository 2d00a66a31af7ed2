"""Alembic revisions of the metadata schema, run programmatically (portway.db.migrations).

No alembic.ini and no env.py are needed at run time: `migrate()` builds the Alembic context
itself from this folder. Add a revision as `versions/NNNN_what.py` (down_revision: the
previous head), then set `HEAD` in portway.db.migrations to its id; a test checks they agree.
"""
