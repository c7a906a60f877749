"""Pruned weights as content-addressed artifacts, and the clean model every evaluation runs on.

After pruning, a cell's whole ``state_dict`` is written once as safetensors to
``<store root>/artifacts/<sha256>.safetensors`` (the SHA-256 of the file, so identical weights
are one file). Every evaluation then runs on a *freshly built* model with the artifact loaded
(``strict``: every tensor must fit, none may be missing): whatever a method left behind on the
model it pruned (a forward hook, a patched ``forward``, a swapped tensor) cannot reach the
numbers, and the sparsity gate measures the very tensors that are evaluated.

A method that leaves hooks or a patched ``forward`` on the model fails its cell anyway
(:func:`leftovers`): evaluating the stored weights would hide that the method's own model
behaves differently, and the user should hear about it.

Keep policy (suite key ``keep``, :data:`harness.core.spec.KEEP`): ``auto`` keeps the artifacts
of ok cells up to :data:`~harness.core.spec.KEEP_AUTO_BYTES` and drops bigger ones after
evaluation; ``ok`` keeps every ok cell's; ``all`` keeps failed cells' too; ``none`` keeps none.
A later suite that adds an evaluation loads a kept artifact, or prunes again (deterministically)
when it is gone and checks that the weights hash the same.

A streamed cell (:mod:`harness.drivers.stream`) writes its artifact block by block, as a folder
``artifacts/<sha256>/`` (:class:`ShardWriter`): ``rest.safetensors`` (everything outside the
decoder blocks, tied tensors once), ``block-00000.safetensors``, ... and ``index.json`` (the
shards in order with their SHA-256 and a tensor -> shard map). Its sha256 is that of the lines
``<shard file> <shard sha256>`` in order (:func:`shards_sha256`); the record's ``artifact`` has
the same keys plus ``"shards"`` (the shard files in order). :func:`artifact_path`,
:func:`artifact_sha256`, :func:`verify_artifact`, :func:`load_artifact` (into a whole model, shard
by shard) and :func:`drop_artifact` take either form.

Reuse without re-reading: when an artifact is written (and after any full check), the file system's
record of each of its files (size, mtime and ctime in ns, inode, device; for a shard folder each
shard and ``index.json``) goes to ``<sha256>.stat.json`` beside it. :func:`verify_artifact` trusts
an artifact whose files still match that exactly and hashes it in full otherwise. Any write, truncation,
replacement, ``touch`` or copy changes the ctime or the inode (a process cannot set ctime), as
git, make and rsync rely on; what it cannot see is a change below the file system (bit rot, a
disk edited as a device), which only reading every byte finds: ``--force`` prunes again and
compares the hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from harness.core.spec import KEEP_AUTO_BYTES

ARTIFACTS_DIR = "artifacts"  # under the store's root
_CHUNK = 1 << 22


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_artifact(model: Any, root: Path, run_id: str) -> dict[str, Any]:
    """Write ``model``'s weights (tied tensors once) to ``root/artifacts/<sha256>.safetensors``.

    Cells whose weights are identical (the dense model of two seeds) share the file; each holds
    a reference, ``<sha256>.refs/<run_id>``, and the file goes when the last reference is dropped.

    Returns:
        ``{"sha256", "path" (relative to root), "bytes", "kept": True}`` for the record.
    """
    from safetensors.torch import save_model

    folder = Path(root) / ARTIFACTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        save_model(model, str(tmp))
        sha = file_sha256(tmp)
        dest = folder / f"{sha}.safetensors"
        os.replace(tmp, dest)  # identical content: the same name, replacing it changes nothing
    finally:
        tmp.unlink(missing_ok=True)
    refs = folder / f"{sha}.refs"
    refs.mkdir(exist_ok=True)
    (refs / run_id).touch()
    record_stat(dest, sha)
    return {"sha256": sha, "path": f"{ARTIFACTS_DIR}/{sha}.safetensors", "bytes": dest.stat().st_size,
            "kept": True}


def artifact_path(root: Path, artifact: dict[str, Any] | None) -> Path | None:
    """The artifact's file (or shard folder) when it is still there, else None."""
    if not artifact or not artifact.get("kept"):
        return None
    if artifact.get("shards"):
        folder = Path(root) / ARTIFACTS_DIR / artifact["sha256"]
        return folder if (folder / INDEX).is_file() else None
    path = Path(root) / ARTIFACTS_DIR / f"{artifact['sha256']}.safetensors"
    return path if path.is_file() else None


INDEX = "index.json"  # a sharded artifact's shard list and tensor -> shard map


def shards_sha256(shards: list[tuple[str, str]]) -> str:
    """A sharded artifact's hash: SHA-256 of ``"<file> <sha256>\n"`` for each shard, in order."""
    return hashlib.sha256("".join(f"{f} {h}\n" for f, h in shards).encode()).hexdigest()


def artifact_sha256(path: Path) -> str:
    """The hash of an artifact file, or of a shard folder (each shard hashed again, in its index's order)."""
    if not Path(path).is_dir():
        return file_sha256(path)
    index = json.loads((Path(path) / INDEX).read_text(encoding="utf-8"))
    return shards_sha256([(sh["file"], file_sha256(Path(path) / sh["file"])) for sh in index["shards"]])


def _stat_file(path: Path) -> Path:
    """``artifacts/<sha256>.stat.json`` beside the artifact file or shard folder."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".stat.json")


def _file_stats(path: Path) -> dict[str, list[int]]:
    """File name -> [size, mtime_ns, ctime_ns, inode, device] of the artifact's files."""
    path = Path(path)
    if path.is_dir():
        index = json.loads((path / INDEX).read_text(encoding="utf-8"))
        files = [path / INDEX] + [path / sh["file"] for sh in index["shards"]]
    else:
        files = [path]
    out = {}
    for f in files:
        st = f.stat()
        out[f.name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    return out


def record_stat(path: Path, sha: str) -> None:
    """Note the artifact's files as they are now, known to hash to ``sha`` (see :func:`verify_artifact`)."""
    dest = _stat_file(path)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps({"sha256": sha, "files": _file_stats(path)}) + "\n", encoding="utf-8")
        os.replace(tmp, dest)
    except OSError:  # not noted: the next reuse hashes the artifact in full, as before
        with suppress(OSError):
            tmp.unlink()


def verify_artifact(path: Path, sha: str) -> bool:
    """Whether the artifact at ``path`` still holds the weights that hash to ``sha``: its files as
    noted when they were last hashed (no byte read), else hashed in full (and noted when they match).
    A file gone or unreadable is False."""
    try:
        noted = json.loads(_stat_file(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        noted = None
    try:
        if isinstance(noted, dict) and noted.get("sha256") == sha and noted.get("files") == _file_stats(path):
            return True
        if artifact_sha256(path) != sha:
            return False
    except (OSError, ValueError, KeyError, TypeError):  # a shard or the index gone or damaged
        return False
    record_stat(path, sha)
    return True


class ShardWriter:
    """Writes a streamed cell's artifact one shard at a time (``write``), then names the folder by
    its hash (``finish``); identical weights of another cell share the folder, as files do."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.root, self.run_id = Path(root), run_id
        self.folder = self.root / ARTIFACTS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tmp = self.folder / f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        self.tmp.mkdir()
        self.shards: list[dict[str, Any]] = []
        self.weight_map: dict[str, str] = {}

    def write(self, name: str, tensors: dict[str, Any]) -> None:
        """One shard ``<name>.safetensors`` (tensors that share storage are written once, the first name kept)."""
        from safetensors.torch import save_file

        seen, out = set(), {}
        for key, t in tensors.items():
            ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if ptr not in seen:
                seen.add(ptr)
                out[key] = t.detach().contiguous()
        file = f"{name}.safetensors"
        save_file(out, str(self.tmp / file), metadata={"format": "pt"})
        self.shards.append({"file": file, "sha256": file_sha256(self.tmp / file),
                            "bytes": (self.tmp / file).stat().st_size})
        self.weight_map.update(dict.fromkeys(out, file))

    def finish(self) -> dict[str, Any]:
        """The record's ``artifact``: ``{"sha256", "path", "bytes", "kept", "shards"}``."""
        sha = shards_sha256([(sh["file"], sh["sha256"]) for sh in self.shards])
        index = {"sha256": sha, "shards": self.shards, "weight_map": self.weight_map}
        (self.tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
        dest = self.folder / sha
        try:
            os.replace(self.tmp, dest)
            published = True
        except OSError:  # the same weights are there already (a non-empty folder is not replaced)
            if not (dest / INDEX).is_file():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
            published = False
        refs = self.folder / f"{sha}.refs"
        refs.mkdir(exist_ok=True)
        (refs / self.run_id).touch()
        if published:  # the shards just hashed; a folder already there is checked when it is reused
            record_stat(dest, sha)
        return {"sha256": sha, "path": f"{ARTIFACTS_DIR}/{sha}", "bytes": sum(sh["bytes"] for sh in self.shards),
                "kept": True, "shards": [sh["file"] for sh in self.shards]}

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _load_shards(model: Any, folder: Path) -> tuple[list[str], list[str]]:
    """Load every shard of a sharded artifact into a whole model; (missing, unexpected) names, where
    a tied tensor counts as present when any of its names was loaded."""
    from safetensors.torch import load_file

    index = json.loads((Path(folder) / INDEX).read_text(encoding="utf-8"))
    state = model.state_dict(keep_vars=True)
    loaded, unexpected = set(), []
    for sh in index["shards"]:
        part = load_file(str(Path(folder) / sh["file"]))  # one shard in memory at a time
        unexpected += [k for k in part if k not in state]
        part = {k: v for k, v in part.items() if k in state}
        for k, v in part.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise RuntimeError(f"size mismatch for {k}: {tuple(v.shape)} stored, {tuple(state[k].shape)} in the model")
        model.load_state_dict(part, strict=False)
        loaded.update(id(state[k]) for k in part)
    return [k for k, v in state.items() if id(v) not in loaded], unexpected


def load_artifact(model: Any, path: Path) -> None:
    """Load the artifact into a freshly built ``model``; every tensor must fit exactly.

    Raises:
        ValueError: one line, when the stored tensors do not match the model's (a method that
            replaced modules or changed shapes).
    """
    from safetensors.torch import load_model

    try:
        if Path(path).is_dir():  # a streamed cell's shards
            missing, unexpected = _load_shards(model, Path(path))
        else:
            missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as e:  # shape mismatch
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise ValueError(f"the pruned weights do not fit a freshly built model: {first[:300]}") from e
    if missing or unexpected:
        what = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        what += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise ValueError("the pruned model's tensors do not match a freshly built model's: " + "; ".join(what)
                         + " (did the method replace or add modules?)")


def leftovers(model: Any) -> list[str]:
    """What a method left on the model it pruned that would change its forward: hooks on any
    module, a ``forward`` patched on an instance, global module hooks."""
    from torch.nn.modules import module as torch_module

    found = []
    for name, mod in model.named_modules():
        where = name or "the model"
        hooks = [attr for attr in ("_forward_hooks", "_forward_pre_hooks") if getattr(mod, attr, None)]
        if hooks:
            found.append(f"{where}: {len(getattr(mod, hooks[0]))} forward{' pre' if 'pre' in hooks[0] else ''} hook(s)")
        if "forward" in vars(mod):
            found.append(f"{where}: forward replaced on the instance")
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(torch_module, attr, None):
            found.append(f"{len(getattr(torch_module, attr))} global module {attr.strip('_').replace('_', ' ')}")
    return found


def keep_artifact(keep: str, status: str, nbytes: int) -> bool:
    """Whether the keep policy keeps an artifact of ``nbytes`` for a cell that ended ``status``."""
    if keep == "none":
        return False
    if keep == "all":
        return True
    if status != "ok":
        return False
    return keep == "ok" or nbytes <= KEEP_AUTO_BYTES


def drop_artifact(root: Path, artifact: dict[str, Any], run_id: str) -> None:
    """Mark the artifact dropped for ``run_id``; delete its file when no other cell refers to it."""
    artifact["kept"] = False
    folder = Path(root) / ARTIFACTS_DIR
    refs = folder / f"{artifact['sha256']}.refs"
    (refs / run_id).unlink(missing_ok=True)
    if refs.is_dir() and not any(refs.iterdir()):
        if artifact.get("shards"):
            shutil.rmtree(folder / artifact["sha256"], ignore_errors=True)
        (folder / f"{artifact['sha256']}.safetensors").unlink(missing_ok=True)
        (folder / f"{artifact['sha256']}.stat.json").unlink(missing_ok=True)
        try:
            refs.rmdir()
        except OSError:  # another cell took a reference meanwhile
            pass
