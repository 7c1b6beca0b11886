"""Hypothesis crash-recovery suite for transparent_de (see fuzz/harness.py, docs in crash-testing notes)."""
