"""The `dynacore` command line: serve a node, run a local cluster, talk to a cluster, run the demo.

Configuration for `serve` comes from a TOML file, overridden by DYNACORE_* environment variables,
then by flags (dynacore.config does the layering). Client commands find the cluster through
--seeds (or DYNACORE_SEEDS). Output is rich tables; errors are one red line and exit code 1.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from dynacore.errors import DynacoreError

console = Console(highlight=False)
F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SEEDS = "127.0.0.1:7001"


def _seeds_option(func: F) -> F:
    func = click.option(
        "--seeds",
        envvar="DYNACORE_SEEDS",
        default=DEFAULT_SEEDS,
        show_default=True,
        help="Comma-separated host:port of any cluster nodes.",
    )(func)
    func = click.option(
        "--secret", envvar="DYNACORE_CLUSTER_SECRET", default="", help="Cluster secret."
    )(func)
    return func


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dynacore")
def main() -> None:
    """dynacore: a Dynamo-style replicated key-value store."""


# -- serve -------------------------------------------------------------------------------------


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file.")
@click.option("--node-id", help="This node's id (default: from config or the listen address).")
@click.option("--listen", help="host:port to listen on.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="LMDB data directory.")
@click.option("--seeds", help="Comma-separated host:port of seed nodes.")
@click.option("--members", help="Initial static members: id@host:port,...")
@click.option("--partitions", type=int, help="Number of partitions Q (a power of two).")
@click.option("--n", "n_val", type=int, help="Default replication factor N.")
@click.option("--sync/--no-sync", default=None, help="Durable commits (default on).")
@click.option("--secret", help="Cluster secret (or DYNACORE_CLUSTER_SECRET).")
def serve(
    config_path: str | None,
    node_id: str | None,
    listen: str | None,
    data_dir: str | None,
    seeds: str | None,
    members: str | None,
    partitions: int | None,
    n_val: int | None,
    sync: bool | None,
    secret: str | None,
) -> None:
    """Run one node in the foreground until SIGTERM or Ctrl-C."""
    from dynacore.config import load_config
    from dynacore.node import run_node_forever

    overrides: dict[str, Any] = {
        "node_id": node_id,
        "listen": listen,
        "data_dir": data_dir,
        "seeds": _split(seeds) if seeds is not None else None,
        "members": _split(members) if members is not None else None,
        "partitions": partitions,
        "n": n_val,
        "sync": sync,
        "cluster_secret": secret,
    }
    _setup_logging()
    config = load_config(config_path, overrides=overrides)
    run_node_forever(config, on_ready=lambda address: console.print(f"listening on {address}"))


# -- local cluster -----------------------------------------------------------------------------


@main.command()
@click.option("--nodes", "nodes_count", default=3, show_default=True, help="Number of nodes.")
@click.option("--base-dir", type=click.Path(file_okay=False), help="Where the data dirs go.")
@click.option("--partitions", default=64, show_default=True, help="Partitions Q.")
@click.option("--n", "n_val", default=3, show_default=True, help="Replication factor N.")
def cluster(nodes_count: int, base_dir: str | None, partitions: int, n_val: int) -> None:
    """Run a local multi-process cluster on 127.0.0.1 until Ctrl-C or SIGTERM."""
    from dynacore.localcluster import LocalCluster

    base = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="dynacore-cluster-"))
    local = LocalCluster(base, nodes_count=nodes_count, partitions=partitions, n=n_val)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    local.start()
    table = Table(title=f"dynacore local cluster ({base})")
    for column in ("node", "address", "data dir", "pid"):
        table.add_column(column)
    for node in local.nodes:
        pid = str(node.process.pid) if node.process else "-"
        table.add_row(node.node_id, node.address, str(node.data_dir), pid)
    console.print(table)
    seeds = ",".join(local.addresses)
    console.print(f"Connect: dynacore get KEY --seeds {seeds}")
    console.print(f"     or: dynacore.Client([{', '.join(repr(a) for a in local.addresses)}])")
    console.print("Ctrl-C or SIGTERM stops every node cleanly.")
    while not stop.wait(0.5):
        dead = [node.node_id for node in local.nodes if not node.running]
        if dead:
            console.print(f"[red]node(s) exited: {', '.join(dead)}; stopping[/red]")
            break
    codes = local.stop()
    console.print(f"stopped; exit codes {codes}")


# -- client commands ---------------------------------------------------------------------------


def _client(seeds: str, secret: str) -> Any:
    from dynacore.client import Client

    return Client(_split(seeds), secret=secret)


def _run(action: Callable[[], None]) -> None:
    try:
        action()
    except DynacoreError as exc:
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        sys.exit(1)


@main.command()
@click.argument("key")
@click.argument("value")
@click.option("--context", default="", help="Causal context (hex) from a previous get.")
@click.option("--w", default=None, help="Write quorum: integer, one, quorum or all.")
@click.option("--ttl", type=float, default=None, help="Time to live in seconds.")
@_seeds_option
def put(
    key: str, value: str, context: str, w: str | None, ttl: float | None, seeds: str, secret: str
) -> None:
    """Write VALUE under KEY."""

    def action() -> None:
        with _client(seeds, secret) as client:
            ctx = client.put(key, value, context=bytes.fromhex(context) or None, w=_q(w), ttl=ttl)
        console.print(f"ok; context {ctx.hex()}")

    _run(action)


@main.command()
@click.argument("key")
@click.option("--r", default=None, help="Read quorum: integer, one, quorum or all.")
@_seeds_option
def get(key: str, r: str | None, seeds: str, secret: str) -> None:
    """Read KEY: every sibling value and the causal context."""

    def action() -> None:
        with _client(seeds, secret) as client:
            result = client.get(key, r=_q(r))
        if not result.values:
            console.print("(not found)")
        for index, value in enumerate(result.values):
            console.print(f"sibling {index + 1}: {_show(value)}")
        console.print(f"context {result.context.hex()}")

    _run(action)


@main.command()
@click.argument("key")
@click.option("--context", default="", help="Causal context (hex) from a previous get.")
@click.option("--w", default=None, help="Write quorum.")
@_seeds_option
def delete(key: str, context: str, w: str | None, seeds: str, secret: str) -> None:
    """Delete KEY (a tombstone written with the context)."""

    def action() -> None:
        with _client(seeds, secret) as client:
            client.delete(key, context=bytes.fromhex(context) or None, w=_q(w))
        console.print("deleted")

    _run(action)


@main.command()
@_seeds_option
def status(seeds: str, secret: str) -> None:
    """A nodetool-like table of the cluster as each node sees it."""

    def action() -> None:
        with _client(seeds, secret) as client:
            seen_by = client.status()
            rows = []
            others = [p for p in seen_by.peers if p.node_id != seen_by.node_id]
            for peer in (seen_by, *others):
                try:
                    rows.append((peer, client.status(peer.address)))
                except DynacoreError:
                    rows.append((peer, None))
        table = Table(title=f"dynacore status (up/down as {seen_by.node_id} sees it)")
        for column in ("node", "address", "state", "owned %", "keys", "pending hints"):
            table.add_column(column)
        for peer, node in rows:
            up = getattr(peer, "up", True) and node is not None
            state = "[green]up[/green]" if up else "[red]down[/red]"
            if node is None:
                table.add_row(peer.node_id, peer.address, state, "-", "-", "-")
                continue
            owned = 100.0 * node.partitions_owned / node.partitions
            table.add_row(
                node.node_id,
                node.address,
                state,
                f"{owned:.1f}",
                str(node.key_count),
                str(node.pending_hints),
            )
        console.print(table)

    _run(action)


@main.command()
@click.option("--nodes", "nodes_count", default=3, show_default=True)
def demo(nodes_count: int) -> None:
    """Start a local cluster, run a short workload against it, print what happened, stop."""
    from dynacore.demo import run_demo

    sys.exit(run_demo(nodes_count, console))


# -- membership commands (join, leave, plan, commit, transfers): owned by the membership work --


T = TypeVar("T")
WATCH_POLL_S = 0.5


def _admin(seeds: str, secret: str, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(admin)` with an AdminClient on the seeds; a lone error escapes as itself."""
    import trio

    from dynacore.cluster.admin import AdminClient
    from dynacore.coordinator import exception_leaves

    async def main() -> T:
        async with AdminClient(_split(seeds), secret=secret) as admin:
            return await action(admin)

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        leaves = exception_leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


@main.command()
@click.argument("seed")
@click.option("--node", "node_address", help="host:port of the joining node (default: --seeds).")
@_seeds_option
def join(seed: str, node_address: str | None, seeds: str, secret: str) -> None:
    """Stage the join of a node (the one at --node or --seeds) to the cluster of SEED."""

    def action() -> None:
        claimant = _admin(seeds, secret, lambda a: a.join(seed, node_address))
        console.print(
            f"join staged by the claimant [bold]{claimant}[/bold]; "
            "review it with `dynacore plan`, apply it with `dynacore commit`"
        )

    _run(action)


@main.command()
@click.option("--node", "node_id", default="", help="Id of the leaving node (default: --seeds).")
@_seeds_option
def leave(node_id: str, seeds: str, secret: str) -> None:
    """Stage the leave of a node (default: the node answering at --seeds)."""

    def action() -> None:
        state = _admin(seeds, secret, lambda a: a.leave(node_id))
        leaving = ", ".join(sorted(state.staged_leaves))
        console.print(
            f"staged to leave: [bold]{leaving}[/bold]; "
            "review it with `dynacore plan`, apply it with `dynacore commit`"
        )

    _run(action)


@main.command()
@_seeds_option
def plan(seeds: str, secret: str) -> None:
    """Show what committing the staged changes would do: which partitions move where."""

    def action() -> None:
        state = _admin(seeds, secret, lambda a: a.plan_state())
        _print_plan(state)

    _run(action)


@main.command()
@click.option("--wait", is_flag=True, help="Show the handoff's progress until it is done.")
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True, help="For --wait.")
@_seeds_option
def commit(wait: bool, timeout_s: float, seeds: str, secret: str) -> None:
    """Commit the staged changes at the claimant; the handoff starts at once."""

    def action() -> None:
        state = _admin(seeds, secret, lambda a: a.commit())
        moving = len(state.moving_partitions())
        console.print(f"committed ring epoch {state.epoch}: {moving} partitions to hand off")
        if wait:
            _watch(seeds, secret, timeout_s)

    _run(action)


@main.command()
@click.option("--watch", is_flag=True, help="Show a progress bar until the handoff is done.")
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True, help="For --watch.")
@_seeds_option
def transfers(watch: bool, timeout_s: float, seeds: str, secret: str) -> None:
    """Each partition transfer of the current handoff: from -> to, objects, bytes, rates."""

    def action() -> None:
        if watch:
            _watch(seeds, secret, timeout_s)
        else:
            _print_transfers(_admin(seeds, secret, lambda a: a.transfers()))

    _run(action)


@main.command()
@_seeds_option
def members(seeds: str, secret: str) -> None:
    """The members as the node answering sees them: status, partitions now and pending."""

    def action() -> None:
        state = _admin(seeds, secret, lambda a: a.state())
        table = Table(title=f"dynacore members (ring epoch {state.epoch})")
        for column in ("node", "address", "status", "partitions", "pending", "staged"):
            table.add_column(column)
        for node_id, member in state.members.items():
            now = len(state.ring.partitions_owned(node_id)) if node_id in state.ring.nodes else 0
            pending = "-"
            if state.pending is not None:
                owned = node_id in state.pending.nodes
                pending = str(len(state.pending.partitions_owned(node_id)) if owned else 0)
            staged = "join" if node_id in state.staged_joins else ""
            staged = "leave" if node_id in state.staged_leaves else staged
            table.add_row(node_id, member.address, member.status.value, str(now), pending, staged)
        console.print(table)

    _run(action)


def _print_plan(state: Any) -> None:
    if state.pending is not None:
        console.print(
            f"a handoff of ring epoch {state.epoch} is in progress "
            f"({len(state.confirmed)}/{len(state.moving_partitions())} partitions confirmed); "
            "see `dynacore transfers`"
        )
        return
    if not state.staged_joins and not state.staged_leaves:
        console.print("nothing is staged (stage changes with `dynacore join` / `dynacore leave`)")
        return
    planned = state.plan()
    after = state.commit()
    staged = Table(title="staged changes")
    for column in ("node", "change", "address"):
        staged.add_column(column)
    for node_id in planned.joins:
        staged.add_row(node_id, "[green]join[/green]", state.address_of(node_id))
    for node_id in planned.leaves:
        staged.add_row(node_id, "[red]leave[/red]", state.address_of(node_id))
    console.print(staged)
    owners = Table(title="partitions owned")
    for column in ("node", "now", "after", "change"):
        owners.add_column(column, justify="right")
    for node_id in sorted(set(state.ring.nodes) | set(planned.ring.nodes)):
        now = len(state.ring.partitions_owned(node_id)) if node_id in state.ring.nodes else 0
        later = len(planned.ring.partitions_owned(node_id)) if node_id in planned.ring.nodes else 0
        owners.add_row(node_id, str(now), str(later), f"{later - now:+d}")
    console.print(owners)
    moves = Table(title=f"{len(after.transfers())} partitions to hand off after commit")
    for column in ("partition", "owner", "new owner", "streams to"):
        moves.add_column(column)
    for transfer in after.transfers():
        p = transfer.partition
        old, new = state.ring.owner(p), planned.ring.owner(p)
        moved = f"[bold]{new}[/bold]" if new != old else new
        moves.add_row(str(p), old, moved, ", ".join(transfer.targets) or "(owner change only)")
    console.print(moves)
    console.print("apply with `dynacore commit` (add --wait to follow the handoff)")


def _print_transfers(progress: Any) -> None:
    state = progress.state
    if state.pending is not None:
        title = (
            f"handoff of ring epoch {state.epoch}: "
            f"{progress.confirmed}/{progress.moving} partitions confirmed"
        )
    else:
        title = f"no handoff pending (ring epoch {state.epoch})"
    table = Table(title=title)
    for column in ("partition", "from → to", "objects", "bytes", "objects/s", "MB/s", "state"):
        table.add_column(column, justify="right" if column != "from → to" else "left")
    for row in sorted(progress.rows, key=lambda r: (r.partition, r.target)):
        table.add_row(
            str(row.partition),
            f"{row.sender} → {row.target}",
            str(row.objects),
            str(row.size_bytes),
            f"{row.objects_per_s:.0f}",
            f"{row.mb_per_s:.2f}",
            row.status,
        )
    console.print(table)
    sweeps = Table(title="drop sweeps (data a node no longer replicates)")
    for column in ("node", "swept ring epoch", "stale keys in last sweep", "sweeps"):
        sweeps.add_column(column)
    for node_id, report in progress.reports.items():
        if report is None:
            sweeps.add_row(node_id, "[red]unreachable[/red]", "-", "-")
        else:
            sweep = report.sweep
            sweeps.add_row(
                node_id, str(sweep.swept_epoch), str(sweep.stale_keys), str(sweep.sweeps)
            )
    console.print(sweeps)


def _watch(seeds: str, secret: str, timeout_s: float) -> None:
    """A progress bar over the confirmed partitions until the handoff and sweeps are done."""
    import trio
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    async def watch(admin: Any) -> Any:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} partitions"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("handoff", total=None)
            with trio.fail_after(timeout_s):
                while True:
                    progress = await admin.transfers()
                    total = max(progress.moving, 1) if progress.state.pending else None
                    done = progress.confirmed if progress.state.pending else total
                    mb = progress.size_bytes / 1e6
                    bar.update(
                        task,
                        total=total or bar.tasks[0].total or 1,
                        completed=done if done is not None else bar.tasks[0].total or 1,
                        description=f"epoch {progress.state.epoch}: "
                        f"{progress.objects} objects, {mb:.1f} MB",
                    )
                    if progress.done():
                        return progress
                    await trio.sleep(WATCH_POLL_S)

    try:
        progress = _admin(seeds, secret, watch)
    except TimeoutError:
        raise DynacoreError(f"the handoff was not done after {timeout_s} s") from None
    _print_transfers(progress)


# -- end membership commands --------------------------------------------------------------------
#
#
#
# -- anti-entropy commands (repair, aae-status): owned by the anti-entropy work -----------------

REPAIR_TIMEOUT_S = 600.0  # one partition's full exchange, run by one node
AAE_STATUS_TIMEOUT_S = 10.0


def _with_rpc(seeds: str, secret: str, fn: Callable[[Any], Any]) -> Any:
    """Run `await fn(call)` in trio with an RPC client to the cluster (call: RpcClient.call)."""
    import random

    import trio

    from dynacore.coordinator import exception_leaves
    from dynacore.limits import Limits
    from dynacore.net.rpc import open_rpc_client
    from dynacore.net.transport import TcpTransport

    async def main() -> Any:
        limits = Limits()
        async with open_rpc_client(
            TcpTransport(limits),
            client_id="dynacore-cli",
            rng=random.Random(),
            secret=secret.encode(),
            limits=limits,
        ) as rpc:
            return await fn(rpc.call)

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:  # the client's nursery wraps the error: show it as is
        leaves = exception_leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


@main.command()
@click.option("--partition", "partitions", type=int, multiple=True, help="Only these (repeatable).")
@_seeds_option
def repair(partitions: tuple[int, ...], seeds: str, secret: str) -> None:
    """Run a full anti-entropy exchange of every partition now."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from dynacore.cluster.antientropy import RepairReport, fetch_view, repair_cluster

    columns = (
        SpinnerColumn(),
        TextColumn("[bold]repair[/bold] partition {task.fields[partition]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[repaired]} keys repaired, {task.fields[exchanges]} exchanges"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )

    async def work(call: Any) -> RepairReport:
        view = await fetch_view(call, _split(seeds), AAE_STATUS_TIMEOUT_S)
        chosen = list(partitions) or list(range(view.ring.q))
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(
                "repair", total=len(chosen), partition="-", repaired=0, exchanges=0
            )

            def step(partition: int, report: RepairReport) -> None:
                progress.update(
                    task,
                    advance=1,
                    partition=partition,
                    repaired=report.keys_repaired,
                    exchanges=report.exchanges,
                )

            return await repair_cluster(call, view, chosen, REPAIR_TIMEOUT_S, step)

    def action() -> None:
        report = _with_rpc(seeds, secret, work)
        console.print(
            f"repaired {report.keys_repaired} keys in {report.partitions} partitions "
            f"({report.exchanges} exchanges, {report.bytes_sent} bytes)"
        )
        if report.failed:
            console.print(f"[red]no replica could repair partitions {report.failed}[/red]")
            sys.exit(1)

    _run(action)


@main.command("aae-status")
@click.option("--all", "show_all", is_flag=True, help="Also trees that never exchanged.")
@_seeds_option
def aae_status(show_all: bool, seeds: str, secret: str) -> None:
    """Per partition and node: keys, the last exchange and the keys it repaired; pending hints."""
    import time

    from dynacore.cluster.antientropy import NodeAaeStatus, fetch_aae_status, fetch_view

    async def work(call: Any) -> list[tuple[str, NodeAaeStatus | None]]:
        view = await fetch_view(call, _split(seeds), AAE_STATUS_TIMEOUT_S)
        return await fetch_aae_status(call, view, AAE_STATUS_TIMEOUT_S)

    def action() -> None:
        statuses = _with_rpc(seeds, secret, work)
        now_ms = time.time() * 1000
        table = Table(title="dynacore anti-entropy")
        for column in (
            "partition",
            "n",
            "node",
            "keys",
            "last exchange",
            "exchanges",
            "keys repaired",
            "with",
        ):
            table.add_column(column)
        rows = []
        for node, status in statuses:
            if status is None:
                console.print(f"[red]{node} did not answer[/red]")
                continue
            for tree in status.trees:
                if tree.exchanges or show_all:
                    rows.append((tree.partition, tree.n, node, tree))
        for partition, n, node, tree in sorted(rows, key=lambda row: row[:3]):
            ago = (
                f"{(now_ms - tree.last_exchange_ms) / 1000:.1f} s ago"
                if tree.last_exchange_ms
                else "never"
            )
            table.add_row(
                str(partition),
                str(n),
                node,
                str(tree.keys),
                ago,
                str(tree.exchanges),
                str(tree.keys_repaired),
                tree.last_peer or "-",
            )
        console.print(table)
        hints = Table(title="pending hints")
        for column in ("held by", "for", "hints"):
            hints.add_column(column)
        for node, status in statuses:
            for target, count in status.hints if status else ():
                hints.add_row(node, target, str(count))
        console.print(hints)

    _run(action)


# -- end anti-entropy commands ------------------------------------------------------------------
#
#
#


def _setup_logging() -> None:
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)]
    )


def _q(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def _show(value: bytes) -> str:
    try:
        return repr(value.decode("utf-8"))
    except UnicodeDecodeError:
        return value.hex()


if __name__ == "__main__":  # pragma: no cover
    main()
