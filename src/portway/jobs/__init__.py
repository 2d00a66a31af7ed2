"""Maintenance jobs (ADR 0027): garbage collection, cleanup, upload purge and fsck, run on a
schedule or on demand, exactly once in a cluster, each run recorded with its report.

cron       cron schedules, five fields or six with seconds (UTC)
kinds      what each job type does, and its report
records    the runs in the database (job_runs, job_schedule), fenced by the job's lease
runner     one run under the job's lease: progress, heartbeat, report
scheduler  in every worker of `portway serve`: fire times and queued runs, through leases
services   what the CLI, the admin API and the web UI call (list jobs, runs, run now, a run)
"""
