"""The benchmark suite behind `make bench` (`python -m bench`).

Invariants:
- Benchmarks record figures; they never assert a time.
- Everything runs on 127.0.0.1; every process the suite starts is stopped by the
  `Procs` that started it, on success, failure or Ctrl-C.
- Figures measured side by side come from the same run, with several repetitions,
  reported as min / median / max.
"""
