"""The overlay network (Nebula): the portal as its certificate authority, each device's stable overlay
address, and the short-lived certificates that say which cluster a device serves now.

Only with ``PORTAL_MESH=nebula``; without it every node runs on loopback, as on one host.
"""
