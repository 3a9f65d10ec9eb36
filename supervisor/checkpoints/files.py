"""Bounded, structural reads of the files checkpoints are made of; nothing is unpickled.

- ``torch.save`` writes a zip archive (since torch 1.6): its end-of-central-directory
  record is the last thing written, so a file cut short has none and :mod:`zipfile` cannot
  open it. Only the central directory and the small ``data.pkl`` (the object structure;
  tensors live in separate members) are read, never the tensors.
- safetensors: 8 bytes little-endian header length, that many bytes of JSON, then the
  tensor bytes; the header's ``data_offsets`` say how long the file must be.
- ``data.pkl`` is *scanned* with :mod:`pickletools` for a few scalar fields (a step, a
  world size), never executed.
"""

from __future__ import annotations

import json
import pickletools
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainwarden.supervisor.checkpoints.base import Validation

MAX_PICKLE_BYTES = 64 * 1024 * 1024  # data.pkl of a large model's state dict is a few MB
MAX_JSON_BYTES = 64 * 1024 * 1024  # an index.json / trainer_state.json
# the safetensors library refuses headers above 100 MB
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
OTHER = object()  # a field whose value is neither None, an int nor a string


def check_torch_zip(path: Path, *, label: str | None = None) -> Validation:
    """Whether ``path`` is a complete ``torch.save`` zip archive."""
    name = label or path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Validation(False, f"{name} is missing")
    except OSError as exc:
        return Validation(False, f"cannot read {name}: {exc.strerror or exc}")
    if size == 0:
        return Validation(False, f"{name} is empty")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            pkl = [i for i in infos if i.filename.rsplit("/", 1)[-1] == "data.pkl"]
            if not pkl:
                return Validation(
                    False, f"{name} is a zip archive without data.pkl: not torch.save"
                )
            for info in infos:
                if info.header_offset + info.compress_size > size:
                    return Validation(
                        False, f"{name} is truncated: member {info.filename} ends past the file"
                    )
            if pkl[0].file_size <= MAX_PICKLE_BYTES:
                zf.read(pkl[0])  # checks its CRC
    except zipfile.BadZipFile as exc:
        return Validation(
            False,
            f"{name} is not a complete zip archive ({exc}; {size} bytes): truncated or "
            "still being written",
        )
    except (OSError, EOFError, ValueError, RuntimeError) as exc:
        return Validation(False, f"cannot read {name}: {exc}")
    return Validation(True, f"{name}: complete torch zip, {len(infos)} members")


def torch_pickle(path: Path) -> bytes | None:
    """The ``data.pkl`` of a torch zip (bounded), or None when it cannot be had."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.rsplit("/", 1)[-1] == "data.pkl":
                    if info.file_size > MAX_PICKLE_BYTES:
                        return None
                    return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
        return None
    return None


def pickle_fields(data: bytes, keys: Iterable[str]) -> dict[str, Any]:
    """For each of ``keys`` met as a string in the pickle, the value that follows it: an
    int, a str, None, or :data:`OTHER` (a container or object). The first occurrence
    counts; this is a scan of the opcode stream (a dict's keys precede their values), not
    an interpretation of the pickle, so a field also used as a value elsewhere may mislead:
    use it for fields whose names are distinctive."""
    wanted = set(keys)
    found: dict[str, Any] = {}
    pending: str | None = None
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in _MEMO_OPS:
                continue
            if pending is not None:
                if op.name in _INT_OPS and isinstance(arg, int):
                    found[pending] = arg
                elif op.name == "NONE":
                    found[pending] = None
                elif isinstance(arg, str):
                    found[pending] = arg
                else:
                    found[pending] = OTHER
                pending = None
                if len(found) == len(wanted):
                    break
                continue
            if isinstance(arg, str) and arg in wanted and arg not in found:
                pending = arg
    except Exception:  # pickletools raises ValueError and friends on garbage
        return found
    return found


def check_safetensors(path: Path, *, label: str | None = None) -> Validation:
    """Whether the safetensors file at ``path`` is complete: its header parses and the file
    holds exactly the bytes the header's offsets describe."""
    name = label or path.name
    try:
        size = path.stat().st_size
        if size < 8:
            return Validation(False, f"{name} is truncated: {size} bytes, no header")
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_SAFETENSORS_HEADER:
                return Validation(False, f"{name} has an implausible header length {length}")
            if 8 + length > size:
                return Validation(
                    False, f"{name} is truncated: {size} bytes, its header alone needs {8 + length}"
                )
            header = json.loads(f.read(length))
    except FileNotFoundError:
        return Validation(False, f"{name} is missing")
    except OSError as exc:
        return Validation(False, f"cannot read {name}: {exc.strerror or exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        return Validation(False, f"{name} has an unreadable header: {exc}")
    if not isinstance(header, dict):
        return Validation(False, f"{name} has a header that is not a JSON object")
    end = 0
    tensors = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
        ):
            return Validation(False, f"{name}: tensor {key!r} has no valid data_offsets")
        end = max(end, offsets[1])
        tensors += 1
    need = 8 + length + end
    if size != need:
        what = "truncated" if size < need else "longer than its header describes"
        return Validation(False, f"{name} is {what}: {size} bytes, header describes {need}")
    return Validation(True, f"{name}: complete safetensors, {tensors} tensors")


def read_json(path: Path) -> tuple[Any, str | None]:
    """(the parsed JSON, None) or (None, why it cannot be had)."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return None, f"{path.name} is larger than {MAX_JSON_BYTES} bytes"
        return json.loads(path.read_bytes()), None
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except OSError as exc:
        return None, f"cannot read {path.name}: {exc.strerror or exc}"
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"{path.name} is not valid JSON (truncated?): {exc}"


def check_index(root: Path, index_name: str, shard_check: Any) -> Validation:
    """A Hugging Face sharded-weights index (``*.index.json``): it parses, has a
    ``weight_map``, and every shard it names exists and passes ``shard_check``."""
    data, why = read_json(root / index_name)
    if why is not None:
        return Validation(False, why)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        return Validation(False, f"{index_name} has no weight_map")
    shards = sorted({str(v) for v in weight_map.values()})
    for shard in shards:
        if "/" in shard or shard.startswith("."):
            return Validation(False, f"{index_name} names a shard outside the checkpoint: {shard}")
        verdict: Validation = shard_check(root / shard)
        if not verdict.valid:
            return Validation(False, f"{index_name}: {verdict.reason}")
    return Validation(True, f"{index_name}: all {len(shards)} shard(s) complete")
