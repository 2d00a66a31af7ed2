"""Coordination between the processes of one host and the nodes of a cluster (ADR 0021).

interfaces  the protocols: `Lock`/`Locks` (exclusive, for single flight), `Lease`/`Leases`
            (one holder for a job, with a fencing token)
flock       locks on one host: `flock`'d files in a folder
postgres    locks in a cluster: PostgreSQL session advisory locks
leases      leases as rows of the metadata database (SQLite on one host, PostgreSQL)
singleton   run a job on one node at a time, taken over when its holder dies
"""
