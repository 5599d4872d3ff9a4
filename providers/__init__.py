"""Provider drivers: one interface (``providers.base``), drivers that only translate."""
