"""One driver module per guest type, all behind ``base.Driver``."""
