"""Benchmarks, run by `make bench`. Not part of the product: nothing under `ahop`, `app`, `worker` or `storage`
imports this package."""
