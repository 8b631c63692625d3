"""The supply side: providers' devices and their GPUs, the agents' protocol (registration, heartbeats,
commands), proof of compute, liveness and faults, reliability, telemetry, the addresses the portal may call,
and the GPU catalogue."""
