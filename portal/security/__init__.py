"""The security layer: hashing, credentials, authorization, firewall and audit."""
