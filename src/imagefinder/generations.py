"""Index generations: a new index is built beside the one being served, then served from one
atomic step on, and the previous one can be served again. `IndexGenerations` is what the reindex
use case and the server rely on; `Generations` here keeps them for the embedded store, and
`stores.milvus_generations.MilvusGenerations` for a Milvus collection (one collection per
generation, the pointer in its meta collection).

Layout, for the index folder `base` (`<home>/index` unless configured):

    base/                        generation "" : the index as every earlier version laid it out
    base.generations/g0002/      later generations, one folder each
    base.generations/CURRENT     {"current": "g0002", "history": ["", "g0002"]}

A switch can retire the generations served before the last few (`store.keep_generations`),
except the first, so a collection fine-tuned again and again does not keep a copy of
its index per version.

CURRENT is replaced whole (written beside, fsynced, renamed), so a process killed at any moment
leaves either the old or the new pointer, never half of one; a generation folder that CURRENT
never named (a build that was killed) is not served and is removed by the next build. A reader
notices a switch by `token()`, a stat of CURRENT, cheap enough to call on every request.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from imagefinder.errors import ImageFinderError


class GenerationError(ImageFinderError):
    """A generation cannot be built, switched to or rolled back to (another build running, no
    previous generation)."""


@dataclass(frozen=True)
class Generation:
    name: str  # "" for the first generation, which lives where the index always lived
    location: str  # a folder, or a milvus:// URI

    @property
    def label(self) -> str:
        return self.name or "g0001"

    @property
    def path(self) -> Path:
        """The folder of an embedded store's generation."""
        return Path(self.location)


class IndexGenerations(Protocol):
    def current(self) -> Generation: ...

    def history(self) -> list[Generation]:
        """Every generation that has been served, oldest first."""
        ...

    def token(self) -> str:
        """Changes whenever the served generation changes; a server asks twice a second."""
        ...

    def building(self) -> AbstractContextManager[Generation]:
        """A new, empty generation for the duration of a build, kept from a second build at once.
        A build that raises (or is killed) leaves nothing that is served."""
        ...

    def switch(self, generation: Generation, keep: int | None = None) -> list[Generation]:
        """Serve `generation` from now on, in one atomic step. With `keep`, the generations
        served before the last `keep` (`retired`: never the first) are forgotten in that same
        step, then removed, best effort (what a failure leaves, the next build removes); they
        are returned."""
        ...

    def rollback(self) -> Generation:
        """Serve the generation served before the current one again."""
        ...

    def close(self) -> None: ...


def retired(history: list[str], keep: int) -> list[str]:
    """The names of `history` (oldest first) that retiring down to `keep` removes: all but the
    last `keep`, never the first generation "" (it is the index folder or the collection users
    and tools know by name), never fewer than two kept (the served one and one to roll back to)."""
    recent = history[-max(2, keep) :]
    return [name for name in history if name and name not in recent]


def switched(history: list[str], name: str, keep: int | None) -> tuple[list[str], list[str]]:
    """(the history after switching to `name`, the names that switch retires with `keep`)."""
    history = [served for served in history if served != name] + [name]
    gone = retired(history, keep) if keep is not None else []
    return [served for served in history if served not in gone], gone


def next_name(history: list[str]) -> str:
    used = [int(m.group(1)) for name in history if (m := re.fullmatch(r"g(\d+)", name))]
    return f"g{max([1, *used]) + 1:04d}"


class Generations:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.folder = base.with_name(base.name + ".generations")
        self._pointer = self.folder / "CURRENT"

    def current(self) -> Generation:
        return self._generation(self._state()["current"])

    def history(self) -> list[Generation]:
        """Every generation that has been served, oldest first."""
        return [self._generation(name) for name in self._state()["history"]]

    def token(self) -> str:
        """Changes whenever the served generation changes."""
        try:
            info = self._pointer.stat()
        except FileNotFoundError:
            return "base"
        return f"{info.st_mtime_ns}:{info.st_size}:{info.st_ino}"

    @contextmanager
    def building(self) -> Iterator[Generation]:
        """A new, empty generation folder for the duration of a build, under a lock that keeps
        a second build out. A build that raises (or is killed) leaves nothing that is served."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".build.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GenerationError("another index generation is being built right now") from None
            self._remove_unserved()
            generation = self._generation(next_name(self._state()["history"]))  # type: ignore[arg-type]
            generation.path.mkdir(parents=True)
            try:
                yield generation
            except BaseException:
                if generation.name not in self._state()["history"]:
                    shutil.rmtree(generation.path, ignore_errors=True)
                raise

    def switch(self, generation: Generation, keep: int | None = None) -> list[Generation]:
        with self._pointer_lock():
            history, gone = switched(self._history(), generation.name, keep)
            # One write names the new generation and forgets the retired ones, so a server
            # following the pointer sees one change; a process killed before the folders go
            # leaves folders no pointer names, which the next build removes.
            self._write({"current": generation.name, "history": history})
        for name in gone:
            shutil.rmtree(self._generation(name).path, ignore_errors=True)
        return [self._generation(name) for name in gone]

    def rollback(self) -> Generation:
        with self._pointer_lock():
            history = self._history()
            if len(history) < 2:
                raise GenerationError("there is no previous index generation to roll back to")
            previous = self._generation(history[-2])
            if not previous.path.is_dir():
                raise GenerationError(
                    f"the previous generation {previous.label} is gone from {previous.path}"
                )
            self._write({"current": previous.name, "history": history[:-1]})
        return previous

    def close(self) -> None:
        """Nothing to release: the pointer is a file read on each call."""

    @contextmanager
    def _pointer_lock(self) -> Iterator[None]:
        """Held while the pointer is read, changed and written, so a rollback and a switch at
        once cannot undo each other or name a generation the other retires."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".pointer.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _generation(self, name: str) -> Generation:
        return Generation(name, str(self.folder / name if name else self.base))

    def _history(self) -> list[str]:
        return [str(name) for name in self._state()["history"]]  # type: ignore[attr-defined]

    def _state(self) -> dict[str, object]:
        try:
            state = json.loads(self._pointer.read_text())
        except FileNotFoundError:
            return {"current": "", "history": [""]}
        except (OSError, ValueError) as exc:
            raise GenerationError(f"{self._pointer} cannot be read: {exc}") from exc
        return state  # type: ignore[no-any-return]

    def _write(self, state: dict[str, object]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self._pointer.with_suffix(".tmp")
        with open(partial, "w") as handle:
            handle.write(json.dumps(state))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self._pointer)
        directory = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _remove_unserved(self) -> None:
        served = set(self._state()["history"])  # type: ignore[arg-type]
        for child in self.folder.iterdir():
            if child.is_dir() and re.fullmatch(r"g\d+", child.name) and child.name not in served:
                shutil.rmtree(child, ignore_errors=True)
