"""How an adapter names its base so it loads from anywhere: an absolute path or a Hub id, and the Hub id of a local
copy (``base_model_id``) checked against the Hub by sampled weights, without downloading the model.

The check reads the same 16 values per tensor that the base fingerprint samples (``io.sampling``) from the
Hub's safetensors files with HTTP range requests (a few bytes each), for up to ``CHECKED_TENSORS`` tensors.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .checkpoint import Checkpoint, looks_like_local_path
from ..core.errors import UserError
from .sampling import checkpoint_sample, sample_bytes, sample_positions
from .safetensors_file import st_dtype

CHECKED_TENSORS = 4
#: The ``provenance`` key that records the Hub id of a base pruned from a local copy.
BASE_ID_KEY = "base_model_id"


class BaseIdMismatchError(UserError):
    """The Hub repo named as the base's id holds other weights than the local base."""


def portable_ref(ref: str | os.PathLike) -> str:
    """An existing local folder as an absolute path (loads from any current directory); a Hub id as is."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.is_dir() else str(ref)


def is_hub_id(ref: str | None) -> bool:
    """Whether ``ref`` reads as a Hub repo id ('user/name' or 'name') rather than a local path."""
    return bool(ref) and not looks_like_local_path(str(ref)) and not Path(str(ref)).expanduser().exists()


def checked_names(names: Sequence[str]) -> list[str]:
    """Up to ``CHECKED_TENSORS`` tensor names spread over ``names`` (sorted), the ones the Hub check samples."""
    ordered = sorted(names)
    step = max(1, len(ordered) // CHECKED_TENSORS)
    return ordered[::step][:CHECKED_TENSORS]


def verify_base_model_id(
    repo_id: str, local_samples: Mapping[str, bytes], revision: str | None = None, token: str | bool | None = None
) -> bool | None:
    """Compare the local base's samples (name -> ``tensor_sample``) with the same values read from Hub ``repo_id``.

    True when they match; None when the Hub cannot be reached (nothing checked); raises :class:`BaseIdMismatchError`
    when the weights differ and :class:`UserError` when the repo, revision or a tensor does not exist.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import NotASafetensorsRepoError, OfflineModeIsEnabled

    from ..core.hub_errors import TransportError, describe_hub_error

    if not is_hub_id(repo_id) or repo_id.count("/") > 1:
        raise UserError(f"base_model_id {repo_id!r} is not a Hub id like 'user/model'")
    try:
        api = HfApi(token=token)
        api.repo_info(repo_id, revision=revision)  # unreachable or missing: a clear answer before the file reads
        metadata = api.get_safetensors_metadata(repo_id, revision=revision)
        for name in checked_names(list(local_samples)):
            if name not in metadata.weight_map:
                raise BaseIdMismatchError(
                    f"Hub repo {repo_id!r} has no tensor {name!r}: it is not the base this "
                    "adapter was pruned from; pass the right --base-model-id"
                )
            filename = metadata.weight_map[name]
            info = metadata.files_metadata[filename].tensors[name]
            remote = _remote_sample(
                repo_id, filename, revision, token, info.dtype, tuple(info.shape), info.data_offsets[0]
            )
            if remote != local_samples[name]:
                raise BaseIdMismatchError(
                    f"Hub repo {repo_id!r} holds other weights than the local base (tensor "
                    f"{name!r} differs): pass the Hub id of the model you pruned from, or "
                    "leave --base-model-id out"
                )
    except BaseIdMismatchError:
        raise
    except (TransportError, OfflineModeIsEnabled):  # no network: the id is recorded unchecked
        return None
    except NotASafetensorsRepoError as err:
        raise UserError(
            f"--base-model-id {repo_id!r} has no safetensors weights on the Hub ({constants.ENDPOINT}); "
            "name the repo of the base model"
        ) from err
    except Exception as err:
        clear = describe_hub_error(err, repo_id, revision)
        if clear is None:
            raise
        raise UserError(f"cannot check --base-model-id: {clear}") from err
    return True


def base_id_record(
    base: str | os.PathLike, checkpoint: Checkpoint, base_model_id: str | None, token: str | bool | None = None
) -> dict[str, object]:
    """The provenance entries naming the base's Hub id: ``base_model_id`` given for a local ``base`` (checked
    against the Hub when it is reachable, ``base_model_id_checked`` says whether it was), or ``base`` itself when it
    is a Hub id. Empty when there is no Hub id."""
    if base_model_id is None:
        return {BASE_ID_KEY: str(base)} if is_hub_id(str(base)) else {}
    if is_hub_id(str(base)) and str(base) != base_model_id:
        raise UserError(
            f"--base-model-id {base_model_id!r} names another repo than the Hub base {str(base)!r}; "
            "--base-model-id is for a base given as a local folder"
        )
    samples = {name: checkpoint_sample(checkpoint, name) for name in checked_names(checkpoint.names())}
    checked = verify_base_model_id(base_model_id, samples, token=token)
    return {BASE_ID_KEY: base_model_id, "base_model_id_checked": bool(checked)}


def _remote_sample(
    repo_id: str,
    filename: str,
    revision: str | None,
    token: str | bool | None,
    dtype: str,
    shape: tuple[int, ...],
    data_offset: int,
) -> bytes:
    """``tensor_sample`` of one Hub tensor, read value by value with range requests."""
    torch_dtype = st_dtype(dtype)
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    header = _read_range(repo_id, filename, revision, token, 0, 8)
    data_start = 8 + struct.unpack("<Q", header)[0]
    numel = math.prod(shape)
    raw = b"".join(
        _read_range(repo_id, filename, revision, token, data_start + data_offset + int(p) * itemsize, itemsize)
        for p in sample_positions(numel)
    )
    values = torch.frombuffer(bytearray(raw), dtype=torch_dtype)
    return sample_bytes(shape, values)


def _read_range(
    repo_id: str, filename: str, revision: str | None, token: str | bool | None, start: int, length: int
) -> bytes:
    """``length`` bytes of a Hub file from ``start`` (one HTTP range request)."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(repo_id, filename, revision=revision)
    headers = {**build_hf_headers(token=token), "Range": f"bytes={start}-{start + length - 1}"}
    response = get_session().get(url, headers=headers, follow_redirects=True)
    hf_raise_for_status(response)
    if len(response.content) != length:
        raise UserError(
            f"the Hub answered a range request of {repo_id}/{filename} with {len(response.content)} bytes, not {length}"
        )
    return response.content


__all__ = [
    "BASE_ID_KEY",
    "BaseIdMismatchError",
    "base_id_record",
    "checked_names",
    "is_hub_id",
    "portable_ref",
    "verify_base_model_id",
]
