"""Example: an agent whose model calls are steps (a fake, offline model)."""
