"""Example: an async research agent whose parallel tool calls are steps (fake, offline tools)."""
