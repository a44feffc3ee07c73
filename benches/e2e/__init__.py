"""End-to-end benchmarks: a YCSB-style load driver run against Redis (primary + replica) and a
3-node dynacore cluster, side by side.

Modules:
- `ycsb`        key choice (YCSB's scrambled zipfian), workloads, latency summaries: pure, no I/O;
- `driver`      the load driver process: one client, 64 concurrent requests, JSON over stdio;
- `redis_pair`  a Debian `redis-server` primary plus one replica on free 127.0.0.1 ports;
- `targets`     the systems under test (Redis, dynacore per backend) and the driver process;
- `run`         the standalone side-by-side table (`python -m benches.e2e.run --quick`);
- `profile`     py-spy over the node processes while a workload runs;
- `bench_cluster` the same runs wired into pytest-benchmark.
"""
