"""Example flows for examples/signup.py."""
