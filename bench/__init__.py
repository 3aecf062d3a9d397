"""The benchmark suite: ``python -m bench`` (``make bench``); docs/performance.md.

Modules, in the order a run uses them: :mod:`bench.run` (command line,
orchestration), :mod:`bench.workload` (the ~1 KB event and its bodies),
:mod:`bench.procs` (processes, memory, CPU), :mod:`bench.ceiling` and
:mod:`bench.graph` (the servers beside the sidecar), :mod:`bench.load` (wrk or
the Python loader), :mod:`bench.prefill` (backlogs), :mod:`bench.sdk` (the
official SDK path), :mod:`bench.phases` (the measurements) and
:mod:`bench.report` (targets, table, JSON).
"""
