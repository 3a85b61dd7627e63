"""Distillation: a stronger teacher model writes training data (`generate`), a person reviews it (`review`).

`provenance` is what every generated row carries (where it came from, what a reviewer said of it) and
the gate that keeps unreviewed teacher data out of training.
"""
