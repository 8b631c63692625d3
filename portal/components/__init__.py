"""Reusable UI pieces, plain functions returning ``rx.Component``."""
