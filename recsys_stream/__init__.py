"""recsys-stream: a real-time streaming recommender on Bytewax, Numba and Kafka."""

__version__ = "0.1.0"
