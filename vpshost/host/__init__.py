"""This host: capability probe, cgroups, network, storage and images."""
