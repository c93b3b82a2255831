"""Index generations of a Milvus collection (see `imagefinder.generations`).

The URI's collection stays the name users and servers know; generation g0001 is that collection
itself (as every earlier version made it), later ones are collections `<collection>_g0002`, ...
The pointer {"current": ..., "history": [...]} is one row of the meta collection, replaced in one
upsert, so a switch is atomic; a server follows it by reading that row (`token`).

A build is kept from a second one at once by a lock row naming its host and process; a lock left
by a killed process of the same host is taken over, one held elsewhere is refused with its
holder named. (Two builds starting in the same instant could both take it: Milvus has no
compare-and-set.) A generation collection that the pointer never named is dropped by the next
build.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from imagefinder.errors import ImageFinderError
from imagefinder.generations import Generation, GenerationError, next_name, switched
from imagefinder.processes import process_alive
from imagefinder.stores.milvus_meta import META_COLLECTION, MilvusCalls, MilvusMeta

POINTER = "generations"
LOCK = "generations.building"


class MilvusGenerations:
    def __init__(self, server: str, collection: str, retries: int = 3, timeout_s: float = 10.0) -> None:
        self._server = server
        self._collection = collection
        self._calls = MilvusCalls(server, retries, timeout_s)
        # Session: a server polling the pointer sees another process's switch within about a
        # second; the steps of a build and a switch read it at Strong.
        self._meta = MilvusMeta(self._calls, collection, f"{server}/{collection}", "Session")

    def current(self) -> Generation:
        return self._generation(self._state()[0])

    def history(self) -> list[Generation]:
        return [self._generation(name) for name in self._state()[1]]

    def token(self) -> str:
        return self._meta.get(POINTER) or "base"

    @contextmanager
    def building(self) -> Iterator[Generation]:
        self._claim()
        try:
            self._remove_unserved()
            generation = self._generation(next_name(self._state()[1]))
            try:
                yield generation
            except BaseException:
                if generation.name not in self._state()[1]:
                    self._drop(generation.name)
                raise
        finally:
            self._meta.delete(LOCK)

    def switch(self, generation: Generation, keep: int | None = None) -> list[Generation]:
        history, gone = switched(self._state()[1], generation.name, keep)
        # One upsert names the new generation and forgets the retired ones; a collection no
        # pointer names is dropped by the next build, so the drops below may fail or be cut short.
        self._meta.put(POINTER, json.dumps({"current": generation.name, "history": history}))
        dropped = []
        for name in gone:
            if name in self._state()[1]:  # named again meanwhile (Milvus has no compare-and-set)
                continue
            try:
                self._drop(name)
            except ImageFinderError:
                break  # the next build drops what is left
            dropped.append(self._generation(name))
        return dropped

    def rollback(self) -> Generation:
        history = self._state()[1]
        if len(history) < 2:
            raise GenerationError("there is no previous index generation to roll back to")
        previous = self._generation(history[-2])
        if not self._calls(self._calls.client.has_collection, self._name(previous.name)):
            raise GenerationError(f"the previous generation {previous.label} is gone ({previous.location})")
        self._meta.put(POINTER, json.dumps({"current": previous.name, "history": history[:-1]}))
        return previous

    def close(self) -> None:
        self._calls.close()

    # -- internals ---------------------------------------------------------------------------

    def _state(self) -> tuple[str, list[str]]:
        """(the current generation, every generation served, oldest first)."""
        text = self._meta.get(POINTER, "Strong")
        if text is None:
            return "", [""]
        try:
            state = json.loads(text)
            return str(state["current"]), [str(name) for name in state["history"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise GenerationError(
                f"the generation pointer of {self._collection} cannot be read: {exc}"
            ) from exc

    def _name(self, generation: str) -> str:
        return f"{self._collection}_{generation}" if generation else self._collection

    def _generation(self, name: str) -> Generation:
        scheme, address = self._server.split("://", 1)
        return Generation(
            name, f"{'milvuss' if scheme == 'https' else 'milvus'}://{address}/{self._name(name)}"
        )

    def _claim(self) -> None:
        held = self._meta.get(LOCK, "Strong")
        if held is not None:
            holder = json.loads(held)
            if holder.get("host") != socket.gethostname() or process_alive(int(holder.get("pid", 0))):
                raise GenerationError(
                    f"another index generation of {self._collection} is being built right now (process "
                    f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"
                )
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._meta.put(LOCK, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}))

    def _remove_unserved(self) -> None:
        served = {self._name(name) for name in self._state()[1]}
        pattern = re.compile(rf"{re.escape(self._collection)}_g\d+")
        for name in self._calls(self._calls.client.list_collections):
            if pattern.fullmatch(name) and name not in served:
                self._drop_collection(name)

    def _drop(self, generation: str) -> None:
        self._drop_collection(self._name(generation))

    def _drop_collection(self, name: str) -> None:
        # Its facts in the meta collection first: a collection left without them is still
        # found and dropped by the next build, but facts left without a collection would be
        # inherited by a later generation of the same name.
        self._calls(self._calls.client.delete, META_COLLECTION, filter=f'key like "{name}/%"')
        if self._calls(self._calls.client.has_collection, name):
            self._calls(self._calls.client.drop_collection, name)
