"""Prefect flows that orchestrate the DVC pipeline: DVC decides what is up to date; Prefect
adds retries, timeouts, logs, artifacts and schedules. See docs/orchestration.md.
"""
