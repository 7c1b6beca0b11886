"""Example flows for examples/onboarding.py."""
