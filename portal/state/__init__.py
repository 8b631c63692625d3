"""Reflex state, one class per page or feature; event handlers call services and set a few vars."""
