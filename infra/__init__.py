"""Start/stop and settings of the real services ganpipe can use instead of its embedded defaults."""
