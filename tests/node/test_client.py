"""The sync Client (a background trio thread) and the client's routing and argument checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dynacore import objects
from dynacore.client import AsyncClient, Client, GetResult, resolve_lww, resolve_with
from dynacore.errors import AuthError, ConfigError, Unavailable

from .conftest import open_cluster


async def test_sync_client_end_to_end(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:

        def work() -> None:
            with Client(cluster.addresses, secret="s3cret") as client:
                ctx = client.put("a", "1")
                assert client.get("a").values == [b"1"]
                client.put(b"a", b"2", ctx)
                result = client.get("a", r="all")
                assert result.value == b"2"
                client.put_many({"x": "1", "y": "2"}, w=2)
                assert [r.values for r in client.get_many(["x", "y", "z"])] == [[b"1"], [b"2"], []]
                client.delete("x", client.get("x").context)
                assert client.get("x").values == []
                assert client.ring().nodes == ["n1", "n2", "n3"]
                assert client.status(cluster.addresses[1]).node_id == "n2"
                with pytest.raises(TypeError):
                    client.get(1.5)  # type: ignore[arg-type]
            with pytest.raises(Unavailable):
                client.get("a")  # closed

        await trio.to_thread.run_sync(work)


async def test_client_errors_at_connect(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:

        def work() -> None:
            with pytest.raises(AuthError):
                Client(cluster.addresses[:1], secret="wrong")

        await trio.to_thread.run_sync(work)
        with pytest.raises(Unavailable):
            async with AsyncClient(["127.0.0.1:1"], timeout_s=1.0):
                pass
        with pytest.raises(KeyError):  # the caller's own error escapes as itself, not a group
            async with cluster.client():
                raise KeyError("mine")
    with pytest.raises(ConfigError):
        AsyncClient([])
    with pytest.raises(ConfigError):
        AsyncClient(["nohostport"])


async def test_client_moves_on_when_a_node_is_down(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster, cluster.client() as client:
        key = b"route-me"
        first = cluster.replicas(objects.object_key("", key))[0]
        await cluster.stop(first)
        await client.put(key, b"v", w=2)
        assert (await client.get(key, r=2)).values == [b"v"]


async def test_client_argument_checks(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster, cluster.client() as client:
        with pytest.raises(ConfigError):
            await client.put("k", "v", w="most")
        with pytest.raises(ConfigError):
            await client.put("k", "v", ttl=-1)
        with pytest.raises(ConfigError):
            await client.get("k", r=4)  # more than n: refused by the node, typed
        with pytest.raises(TypeError, match="context must be bytes"):
            await client.put("k", "v", "ctx")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="value must be bytes or str"):
            await client.put("k", 5)  # type: ignore[arg-type]
        ring = await client.ring()
        assert ring.nodes == cluster.ids


async def test_namespaces_are_separate_keyspaces(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, namespaces={"cache": 1}) as cluster:
        async with cluster.client() as default, cluster.client(namespace="cache") as cache:
            await default.put("k", "default")
            await cache.put("k", "cached", w="all")  # all = 1 in this namespace
            assert (await default.get("k", r="all")).values == [b"default"]
            assert (await cache.get("k", r="all")).values == [b"cached"]
            stored = objects.object_key("cache", b"k")
            assert sum(cluster.stored(i, stored) is not None for i in cluster.ids) == 1
            async with cluster.client(namespace="nope") as unknown:
                with pytest.raises(ConfigError, match="unknown namespace"):
                    await unknown.get("k")


def test_resolvers() -> None:
    result = GetResult(values=[b"a", b"c", b"b"], context=b"", siblings=3, timestamps_ms=[5, 3, 5])
    assert resolve_lww(result) == b"b"  # newest; ties broken by the larger value
    assert resolve_with(result, lambda vs: b"".join(sorted(vs))) == b"abc"
    empty = GetResult(values=[], context=b"", siblings=1, timestamps_ms=[])
    assert resolve_lww(empty) is None and resolve_with(empty, b"".join) is None
    single = GetResult(values=[b"x"], context=b"", siblings=1, timestamps_ms=[1])
    assert resolve_with(single, lambda vs: b"never called") == b"x"
    with pytest.raises(ValueError, match="siblings"):
        _ = result.value
