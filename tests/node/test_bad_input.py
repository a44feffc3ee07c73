"""Malformed node-level requests get typed errors; nothing is written and the node keeps serving."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dynacore import messages
from dynacore.errors import (
    ConfigError,
    KeyTooLarge,
    ProtocolError,
    Unavailable,
    ValueTooLarge,
    VersionError,
)
from dynacore.limits import Limits
from dynacore.net.rpc import open_rpc_client
from dynacore.net.transport import TcpTransport

from .conftest import open_cluster

GOOD_PUT = ["", b"k", b"v", b"", None, 0, False]


@pytest.mark.parametrize(
    ("msg_type", "fields", "error"),
    [
        (100, [], ProtocolError),  # a node-range type nobody handles
        (messages.CLIENT_GET, [], ProtocolError),
        (messages.CLIENT_GET, ["", "not bytes", None], ProtocolError),
        (messages.CLIENT_GET, ["", b"k", 2.5], ProtocolError),
        (messages.CLIENT_GET, ["", b"k", "most"], ConfigError),
        (messages.CLIENT_GET, ["", b"k", 0], ConfigError),
        (messages.CLIENT_GET, ["", b"k" * 2000, None], KeyTooLarge),
        (messages.CLIENT_PUT, GOOD_PUT[:-1], ProtocolError),
        (messages.CLIENT_PUT, ["", b"k", b"v", b"\xff\x00garbage", None, 0, False], VersionError),
        (messages.CLIENT_PUT, ["", b"k", b"v", b"", None, -5, False], ProtocolError),
        (messages.CLIENT_PUT, ["", b"k", b"v" * 5000, b"", None, 0, False], ValueTooLarge),
        (messages.CLIENT_PUT, ["nope", b"k", b"v", b"", None, 0, False], ConfigError),
        (messages.CLIENT_DELETE, ["", b"k", b"", None, 1], ProtocolError),
        (messages.RING_GET, [1], ProtocolError),
        (messages.STATUS, [b""], ProtocolError),
        (messages.REPLICA_PUT, [b"\x00k", b"not a version set"], VersionError),
        (messages.REPLICA_PUT, [b"\x00k"], ProtocolError),
        (messages.REPLICA_GET, [None], ProtocolError),
    ],
)
async def test_malformed_requests(
    tmp_path: Path, msg_type: int, fields: list[object], error: type[Exception]
) -> None:
    limits = Limits(key_size_bytes=1024, value_size_bytes=4096, request_timeout_s=2.0)
    async with (
        open_cluster(tmp_path, limits=limits) as cluster,
        open_rpc_client(
            TcpTransport(limits), client_id="raw", rng=random.Random(1), secret=b"s3cret"
        ) as rpc,
    ):
        address = cluster.nodes["n1"].address
        with pytest.raises(error):
            await rpc.call(address, msg_type, fields, 5.0)  # type: ignore[arg-type]
        assert all(not cluster.stored_keys(i) for i in cluster.ids)  # nothing half-written
        # the node still serves: a good put, then a read that sees it
        (put_context,) = await rpc.call(address, messages.CLIENT_PUT, GOOD_PUT, 5.0)
        context, envelopes, siblings = await rpc.call(
            address, messages.CLIENT_GET, ["", b"k", None], 5.0
        )
        assert context == put_context and siblings == 1
        assert isinstance(envelopes, list) and len(envelopes) == 1


async def test_forwarded_put_to_a_non_replica_is_refused(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, n=1) as cluster:
        coordinator = cluster.nodes["n1"].coordinator
        key = next(
            k
            for k in (f"k{i}".encode() for i in range(1000))
            if cluster.membership is not None
            and cluster.membership.preference_list(b"\x00" + k, 1) != ("n1",)
        )
        with pytest.raises(Unavailable):
            await coordinator.put("", key, b"v", b"", forwarded=True)
        assert all(not cluster.stored_keys(i) for i in cluster.ids)
