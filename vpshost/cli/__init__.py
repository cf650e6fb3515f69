"""The `vps` command line."""
