"""Sources, sinks and readers: everything that touches files, sockets or Bytewax I/O."""
