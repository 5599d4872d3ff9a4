"""Prefect tasks: one per operation, each wrapping one provider or local call."""
