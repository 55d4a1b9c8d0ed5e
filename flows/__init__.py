"""Bytewax dataflow definitions of recsys-stream (built by factories from settings)."""
