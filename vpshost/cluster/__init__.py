"""Several hosts: placement of guests and migration between hosts."""
