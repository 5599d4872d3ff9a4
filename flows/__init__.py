"""Prefect flows: run (and resume), rollback, destroy, drift check."""
