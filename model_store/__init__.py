"""Model storage, loading and the hardware facts that decide how models run (see the modules)."""
