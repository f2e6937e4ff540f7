"""The stream log: the batched writer and the queries operators run."""
