"""Every bound of dynacore, with its unit in its name.

`Limits` is handed to the node, the client and the storage engine; nothing reads a global.
The module constants are the defaults and the hard ceilings that configuration cannot exceed.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynacore.errors import ConfigError

KIB = 1024
MIB = 1024 * KIB

DEFAULT_KEY_SIZE_BYTES = 1 * KIB
DEFAULT_VALUE_SIZE_BYTES = 1 * MIB
# A frame holds one message; batches are cut to fit. Big enough for one maximal value plus its
# version set and envelope, with room for a batch of small ones.
DEFAULT_FRAME_SIZE_BYTES = 4 * MIB
MAX_FRAME_SIZE_BYTES = 256 * MIB
DEFAULT_SIBLINGS_WARN = 25
DEFAULT_SIBLINGS_MAX = 100
DEFAULT_PARTITIONS = 64
MAX_PARTITIONS = 1 << 16
DEFAULT_N = 3
MAX_N = 16
DEFAULT_REQUEST_TIMEOUT_S = 5.0
DEFAULT_IN_FLIGHT_PER_PEER = 1024
DEFAULT_LMDB_MAP_SIZE_BYTES = 1 << 30
DEFAULT_GROUP_COMMIT_MAX_BATCH = 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds one node or client enforces."""

    key_size_bytes: int = DEFAULT_KEY_SIZE_BYTES
    value_size_bytes: int = DEFAULT_VALUE_SIZE_BYTES
    frame_size_bytes: int = DEFAULT_FRAME_SIZE_BYTES
    siblings_warn: int = DEFAULT_SIBLINGS_WARN
    siblings_max: int = DEFAULT_SIBLINGS_MAX
    in_flight_per_peer: int = DEFAULT_IN_FLIGHT_PER_PEER
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S

    def __post_init__(self) -> None:
        _check_range("key_size_bytes", self.key_size_bytes, 1, 64 * KIB)
        _check_range("value_size_bytes", self.value_size_bytes, 0, 64 * MIB)
        _check_range("frame_size_bytes", self.frame_size_bytes, 1 * KIB, MAX_FRAME_SIZE_BYTES)
        _check_range("siblings_warn", self.siblings_warn, 1, self.siblings_max)
        _check_range("siblings_max", self.siblings_max, 1, 100_000)
        _check_range("in_flight_per_peer", self.in_flight_per_peer, 1, 1 << 20)
        if not 0.0 < self.request_timeout_s <= 3600.0:
            raise ConfigError(
                f"request_timeout_s must be in (0, 3600], got {self.request_timeout_s}"
            )
        if self.frame_size_bytes < self.value_size_bytes + self.key_size_bytes + 64 * KIB:
            raise ConfigError(
                "frame_size_bytes must exceed value_size_bytes + key_size_bytes + 64 KiB"
            )


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
