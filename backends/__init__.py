"""Attribution backends: the circuit-tracer reference and the fast ones built on one linearised model."""
