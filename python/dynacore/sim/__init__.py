"""The deterministic cluster simulator (issue 5): real node code, virtual time, one seed.

Modules: `checker` (the lost-write checker, pure), `faults` (the fault schedule of a seed),
`workload` (Jepsen's Riak set workload), `cluster` (the harness that runs N nodes in one
trio.run), `runner` (one seed end to end, many seeds, the summary table); `python -m
dynacore.sim` is the command line (see docs/testing.md).
"""
