"""Example flows for the demo: an order that is reserved, charged and shipped."""
