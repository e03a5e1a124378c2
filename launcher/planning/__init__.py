"""Pure decisions: launcher options, core blocks per worker, re-balancing, allocator and
environment per worker. Reads no file: facts come in as `launcher.host` data."""
