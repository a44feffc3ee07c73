"""NodeConfig: validation, loading order (TOML < DYNACORE_* env < overrides), quorum specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynacore.config import (
    NodeConfig,
    check_quorum_spec,
    format_members,
    load_config,
    parse_members,
    resolve_quorum,
)
from dynacore.errors import ConfigError
from dynacore.limits import Limits


@pytest.mark.parametrize(
    ("spec", "n", "expected"),
    [
        ("one", 3, 1),
        ("quorum", 3, 2),
        ("quorum", 4, 3),
        ("quorum", 1, 1),
        ("all", 5, 5),
        ("ALL", 2, 2),
        (2, 3, 2),
        ("3", 3, 3),
        (None, 3, 2),
    ],
)
def test_resolve_quorum(spec: str | int | None, n: int, expected: int) -> None:
    assert resolve_quorum(spec, n) == expected


def test_resolve_quorum_default_is_used_for_none() -> None:
    assert resolve_quorum(None, 3, default="all") == 3
    assert resolve_quorum(None, 3, default=1) == 1


@pytest.mark.parametrize("spec", [0, 4, -1, "most", "", True, 2.0, "1.5"])
def test_resolve_quorum_rejects(spec: object) -> None:
    with pytest.raises(ConfigError):
        resolve_quorum(spec, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, 17, -3, True])
def test_resolve_quorum_rejects_bad_n(n: int) -> None:
    with pytest.raises(ConfigError):
        resolve_quorum("one", n)


def test_check_quorum_spec_normalises() -> None:
    assert check_quorum_spec(" Quorum ") == "quorum"
    assert check_quorum_spec("2") == 2
    with pytest.raises(ConfigError):
        check_quorum_spec(None)


def test_members_round_trip() -> None:
    members = parse_members("a@127.0.0.1:1, b@host:2,")
    assert members == (("a", "127.0.0.1:1"), ("b", "host:2"))
    assert parse_members(format_members(members)) == members


@pytest.mark.parametrize(
    "spec", ["a", "a@host", "a@host:99999", "a@h:1,a@h:2", "@h:1", "a b@h:1", "a@:1"]
)
def test_members_rejects(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_members(spec)


def test_defaults() -> None:
    config = NodeConfig(node_id="a")
    assert config.partitions == 64 and config.n == 3
    assert config.r == "quorum" and config.w == "quorum"
    assert config.data_dir is None and config.sync is True
    assert config.member_list() == (("a", config.listen),)
    assert config.n_for("") == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"partitions": 48},
        {"partitions": 0},
        {"n": 0},
        {"r": 4},
        {"w": "some"},
        {"listen": "nohost"},
        {"members": (("b", "h:1"),)},
        {"namespaces": {"x": 0}},
        {"namespaces": {"": 2}},
        {"seeds": ("bad",)},
    ],
)
def test_invalid_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        NodeConfig(node_id="a", **kwargs)  # type: ignore[arg-type]


def test_namespaces() -> None:
    config = NodeConfig(node_id="a", namespaces={"sessions": 2})
    assert config.n_for("sessions") == 2
    with pytest.raises(ConfigError, match="unknown namespace"):
        config.n_for("other")


TOML = """
node_id = "toml-node"
listen = "127.0.0.1:7001"
data_dir = "/tmp/dyn"
members = ["toml-node@127.0.0.1:7001", "b@127.0.0.1:7002"]
partitions = 128
n = 2
w = "all"
sync = false

[namespaces]
cache = 1

[limits]
key_size_bytes = 512
request_timeout_s = 2.5
"""


def test_load_order(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    config = load_config(path, env={})
    assert config.node_id == "toml-node" and config.partitions == 128 and config.n == 2
    assert config.w == "all" and config.r == "quorum" and config.sync is False
    assert config.data_dir == Path("/tmp/dyn")
    assert config.members == (("toml-node", "127.0.0.1:7001"), ("b", "127.0.0.1:7002"))
    assert config.namespaces == {"cache": 1}
    assert config.limits == Limits(key_size_bytes=512, request_timeout_s=2.5)

    env = {
        "DYNACORE_N": "3",
        "DYNACORE_SYNC": "yes",
        "DYNACORE_KEY_SIZE_BYTES": "256",
        "DYNACORE_BACKEND": "python",  # not a config key: ignored here
    }
    config = load_config(path, env=env)
    assert config.n == 3 and config.sync is True and config.limits.key_size_bytes == 256
    assert config.limits.request_timeout_s == 2.5  # from the file, not overridden

    config = load_config(path, env=env, overrides={"n": 1, "w": None, "key_size_bytes": 100})
    assert config.n == 1 and config.w == "all" and config.limits.key_size_bytes == 100


def test_env_lists_and_namespaces() -> None:
    env = {
        "DYNACORE_NODE_ID": "a",
        "DYNACORE_MEMBERS": "a@h:1,b@h:2",
        "DYNACORE_SEEDS": "h:1, h:2",
        "DYNACORE_NAMESPACES": "x=1,y=2",
        "DYNACORE_DATA_DIR": "",
    }
    config = load_config(env=env)
    assert config.members == (("a", "h:1"), ("b", "h:2"))
    assert config.seeds == ("h:1", "h:2")
    assert config.namespaces == {"x": 1, "y": 2}
    assert config.data_dir is None


@pytest.mark.parametrize(
    "env",
    [
        {"DYNACORE_NODE_ID": "a", "DYNACORE_N": "three"},
        {"DYNACORE_NODE_ID": "a", "DYNACORE_SYNC": "maybe"},
        {"DYNACORE_NODE_ID": "a", "DYNACORE_REQUEST_TIMEOUT_S": "soon"},
        {"DYNACORE_NODE_ID": "a", "DYNACORE_NAMESPACES": "x"},
        {"DYNACORE_PARTITIONS": "64"},  # no node id anywhere
    ],
)
def test_env_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(env=env)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("node_id = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('node_id = "a"\nreplicas = 3\n')
    with pytest.raises(ConfigError, match="unknown configuration keys"):
        load_config(unknown, env={})
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('node_id = "a"\nn = true\n')
    with pytest.raises(ConfigError):
        load_config(wrong_type, env={})
