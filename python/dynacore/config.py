"""Node configuration: the `NodeConfig` dataclass, its loading (TOML, then DYNACORE_* environment
variables, then explicit overrides) and the quorum-spec resolver shared by node and client.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynacore.errors import ConfigError
from dynacore.limits import DEFAULT_N, DEFAULT_PARTITIONS, MAX_N, MAX_PARTITIONS, Limits

QuorumSpec = str | int
"""A quorum as a user writes it: "one", "quorum", "all" or a positive integer."""

QUORUM_WORDS = ("one", "quorum", "all")
ENV_PREFIX = "DYNACORE_"
DEFAULT_GOSSIP_INTERVAL_S = 1.0
MAX_GOSSIP_INTERVAL_S = 60.0
MAX_NODE_ID_BYTES = 255
MAX_MEMBERS = 1024
MAX_NAMESPACES = 1024
MAX_NAMESPACE_BYTES = 64
DEFAULT_LISTEN = "127.0.0.1:7070"
MAX_INTERVAL_S = 86_400.0  # background intervals (anti-entropy, hints, reaper): at most a day
MAX_TOMBSTONE_GRACE_S = 365 * 86_400.0


def resolve_quorum(spec: QuorumSpec | None, n: int, *, default: QuorumSpec = "quorum") -> int:
    """The number of replicas a quorum spec asks for out of n (None takes `default`)."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise ConfigError(f"n must be an integer in [1, {MAX_N}], got {n!r}")
    chosen = default if spec is None else spec
    if isinstance(chosen, bool):
        raise ConfigError(f"a quorum is 'one', 'quorum', 'all' or an integer, got {chosen!r}")
    if isinstance(chosen, str):
        word = chosen.strip().lower()
        if word.isdigit():
            chosen = int(word)
        elif word == "one":
            return 1
        elif word == "quorum":
            return n // 2 + 1
        elif word == "all":
            return n
        else:
            raise ConfigError(f"a quorum is 'one', 'quorum', 'all' or an integer, got {chosen!r}")
    if not isinstance(chosen, int) or not 1 <= chosen <= n:
        raise ConfigError(f"a quorum must be in [1, n={n}], got {chosen!r}")
    return chosen


def check_quorum_spec(spec: object) -> QuorumSpec:
    """`spec` if it is a well-formed quorum spec (not resolved against an n), else ConfigError."""
    if isinstance(spec, bool) or not isinstance(spec, str | int):
        raise ConfigError(f"a quorum is 'one', 'quorum', 'all' or an integer, got {spec!r}")
    if isinstance(spec, int):
        if not 1 <= spec <= MAX_N:
            raise ConfigError(f"a quorum must be in [1, {MAX_N}], got {spec}")
        return spec
    word = spec.strip().lower()
    if word.isdigit():
        return check_quorum_spec(int(word))
    if word not in QUORUM_WORDS:
        raise ConfigError(f"a quorum is 'one', 'quorum', 'all' or an integer, got {spec!r}")
    return word


def check_address(address: str) -> str:
    """`address` if it is "host:port" with a port in [0, 65535], else ConfigError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"an address is 'host:port', got {address!r}")
    return address


def check_node_id(node_id: str) -> str:
    """`node_id` if it is a valid node id (non-empty, <= 255 UTF-8 bytes, no '@' or ','), else
    ConfigError."""
    if not isinstance(node_id, str) or not node_id.strip():
        raise ConfigError(f"a node id is a non-empty string, got {node_id!r}")
    if len(node_id.encode()) > MAX_NODE_ID_BYTES:
        raise ConfigError(f"a node id is at most {MAX_NODE_ID_BYTES} UTF-8 bytes")
    if any(ch in node_id for ch in "@, \t\n"):
        raise ConfigError(f"a node id has no '@', ',' or whitespace, got {node_id!r}")
    return node_id


def _check_gossip_interval(interval_s: object) -> None:
    if isinstance(interval_s, bool) or not isinstance(interval_s, int | float):
        raise ConfigError(f"gossip_interval_s must be a number, got {interval_s!r}")
    if not 0 < interval_s <= MAX_GOSSIP_INTERVAL_S:
        raise ConfigError(f"gossip_interval_s must be in (0, {MAX_GOSSIP_INTERVAL_S}]")


def parse_members(spec: str | list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Parse "id@host:port,id@host:port" (or a list of "id@host:port") into (id, address) pairs."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    members: list[tuple[str, str]] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        node_id, sep, address = item.partition("@")
        if not sep:
            raise ConfigError(f"a member is 'id@host:port', got {item!r}")
        members.append((check_node_id(node_id), check_address(address)))
    if len(members) > MAX_MEMBERS:
        raise ConfigError(f"at most {MAX_MEMBERS} members, got {len(members)}")
    ids = [node_id for node_id, _ in members]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"duplicate member ids in {ids}")
    return tuple(members)


def format_members(members: tuple[tuple[str, str], ...]) -> str:
    """The inverse of parse_members: "id@host:port,..."."""
    return ",".join(f"{node_id}@{address}" for node_id, address in members)


@dataclass(frozen=True)
class NodeConfig:
    """Everything one node needs to start. Validated on construction (ConfigError)."""

    node_id: str
    listen: str = DEFAULT_LISTEN
    data_dir: Path | None = None  # None: in-memory engine
    seeds: tuple[str, ...] = ()
    members: tuple[tuple[str, str], ...] = ()  # the static cluster: (id, "host:port")
    partitions: int = DEFAULT_PARTITIONS
    n: int = DEFAULT_N
    r: QuorumSpec = "quorum"
    w: QuorumSpec = "quorum"
    gossip_interval_s: float = DEFAULT_GOSSIP_INTERVAL_S  # membership gossip and heartbeats
    namespaces: Mapping[str, int] = field(default_factory=dict)
    cluster_secret: str = ""
    sync: bool = True
    # self-healing (cluster/hints.py, antientropy.py, reaper.py); an interval of 0 turns it off
    aae_interval_s: float = 10.0  # one Merkle exchange of one partition with one peer
    hint_interval_s: float = 1.0  # hinted-handoff delivery rounds
    reap_interval_s: float = 10.0  # TTL and tombstone reaper rounds
    tombstone_grace_s: float = 3600.0  # a tombstone is reaped no sooner than this after its write
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        check_node_id(self.node_id)
        check_address(self.listen)
        for seed in self.seeds:
            check_address(seed)
        _check_gossip_interval(self.gossip_interval_s)
        q = self.partitions
        if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= MAX_PARTITIONS:
            raise ConfigError(f"partitions must be in [1, {MAX_PARTITIONS}], got {q!r}")
        if q & (q - 1):
            raise ConfigError(f"partitions must be a power of two, got {q}")
        resolve_quorum(check_quorum_spec(self.r), self.n)
        resolve_quorum(check_quorum_spec(self.w), self.n)
        self._check_namespaces()
        self._check_intervals()
        ids = [node_id for node_id, _ in self.members]
        if self.members and self.node_id not in ids:
            raise ConfigError(f"node id {self.node_id!r} is not among the members {ids}")
        if not isinstance(self.limits, Limits):
            raise ConfigError("limits must be a dynacore.Limits")

    def _check_namespaces(self) -> None:
        if len(self.namespaces) > MAX_NAMESPACES:
            raise ConfigError(f"at most {MAX_NAMESPACES} namespaces")
        for name, n in self.namespaces.items():
            if not isinstance(name, str) or not 1 <= len(name.encode()) <= MAX_NAMESPACE_BYTES:
                raise ConfigError(f"a namespace name is 1..{MAX_NAMESPACE_BYTES} bytes: {name!r}")
            resolve_quorum("all", n)  # validates n

    def _check_intervals(self) -> None:
        for name in ("aae_interval_s", "hint_interval_s", "reap_interval_s"):
            _check_seconds(name, getattr(self, name), MAX_INTERVAL_S)
        _check_seconds("tombstone_grace_s", self.tombstone_grace_s, MAX_TOMBSTONE_GRACE_S)

    def n_for(self, namespace: str) -> int:
        """The replication factor of a namespace ("" is the default namespace)."""
        if namespace == "":
            return self.n
        try:
            return self.namespaces[namespace]
        except KeyError:
            raise ConfigError(f"unknown namespace {namespace!r}") from None

    def member_list(self) -> tuple[tuple[str, str], ...]:
        """The static members, or this node alone when none are configured."""
        return self.members or ((self.node_id, self.listen),)


def _check_seconds(name: str, value: object, high_s: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high_s:
        raise ConfigError(f"{name} must be a number of seconds in [0, {high_s:g}], got {value!r}")


# -- loading -------------------------------------------------------------------------------------

_TOP_FIELDS = {f.name for f in dataclasses.fields(NodeConfig)} - {"limits"}
_LIMIT_FIELDS = {f.name for f in dataclasses.fields(Limits)}


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Build a NodeConfig from a TOML file, then DYNACORE_* variables of `env`, then `overrides`.

    Each later source replaces single settings of the earlier ones. Limits may be given in a
    [limits] table, as DYNACORE_<LIMIT_NAME> variables, or as overrides by their field name.
    `env` defaults to os.environ; overrides whose value is None are ignored (unset flags).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw.update(_read_toml(Path(path)))
    raw.update(_from_env(os.environ if env is None else env))
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(raw)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    flat: dict[str, Any] = {k: v for k, v in data.items() if k != "limits"}
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        raise ConfigError("[limits] must be a table")
    flat.update(limits)
    return flat


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _TOP_FIELDS | _LIMIT_FIELDS:
        value = env.get(ENV_PREFIX + name.upper())
        if value is not None:
            out[name] = value
    return out


def _build(raw: Mapping[str, Any]) -> NodeConfig:
    unknown = set(raw) - _TOP_FIELDS - _LIMIT_FIELDS
    if unknown:
        raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
    limits = Limits(**{k: _coerce_limit(k, raw[k]) for k in _LIMIT_FIELDS if k in raw})
    kwargs: dict[str, Any] = {"limits": limits}
    for name in _TOP_FIELDS & set(raw):
        kwargs[name] = _COERCE[name](raw[name])
    if "node_id" not in kwargs:
        raise ConfigError("node_id is required (config file, DYNACORE_NODE_ID or --node-id)")
    return NodeConfig(**kwargs)


def _coerce_limit(name: str, value: Any) -> Any:
    if name == "request_timeout_s":
        return _as_float(name, value)
    return _as_int(name, value)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ConfigError(f"{name} must be an integer, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be a boolean, got {value!r}")


def _as_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _as_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ConfigError(f"{name} must be a list of strings or a comma-separated string")


def _as_members(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, tuple) and all(isinstance(m, tuple) and len(m) == 2 for m in value):
        return parse_members([f"{m[0]}@{m[1]}" for m in value])
    if isinstance(value, str | list):
        return parse_members(value)
    raise ConfigError(f"members must be 'id@host:port,...' or a list of them, got {value!r}")


def _as_namespaces(value: Any) -> dict[str, int]:
    if isinstance(value, str):
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError(f"namespaces must be 'name=n,name=n', got {value!r}")
        return {name.strip(): _as_int("namespace n", n) for name, _, n in pairs}
    if isinstance(value, Mapping):
        return {_as_str("namespace", k): _as_int("namespace n", v) for k, v in value.items()}
    raise ConfigError(f"namespaces must be a table of name = n, got {value!r}")


def _as_quorum(value: Any) -> QuorumSpec:
    return check_quorum_spec(value)


def _as_path(value: Any) -> Path | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, str | Path):
        return Path(value)
    raise ConfigError(f"data_dir must be a path, got {value!r}")


_COERCE: dict[str, Any] = {
    "node_id": lambda v: _as_str("node_id", v),
    "listen": lambda v: _as_str("listen", v),
    "data_dir": _as_path,
    "seeds": lambda v: _as_list("seeds", v),
    "members": _as_members,
    "partitions": lambda v: _as_int("partitions", v),
    "n": lambda v: _as_int("n", v),
    "r": _as_quorum,
    "w": _as_quorum,
    "gossip_interval_s": lambda v: _as_float("gossip_interval_s", v),
    "namespaces": _as_namespaces,
    "cluster_secret": lambda v: _as_str("cluster_secret", v),
    "sync": lambda v: _as_bool("sync", v),
    "aae_interval_s": lambda v: _as_float("aae_interval_s", v),
    "hint_interval_s": lambda v: _as_float("hint_interval_s", v),
    "reap_interval_s": lambda v: _as_float("reap_interval_s", v),
    "tombstone_grace_s": lambda v: _as_float("tombstone_grace_s", v),
}
assert set(_COERCE) == _TOP_FIELDS, "every NodeConfig field has a coercion"
