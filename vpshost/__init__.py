"""vpshost: host VPS guests of every type behind one CLI, REST API and web page."""

__version__ = "0.1.0"
