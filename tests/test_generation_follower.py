"""The server's follower of index generations, with stand-in services (the end-to-end switch
under load is in test_finetune_cli.py): a new generation that fails to load is tried again."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from imagefinder.api.app import GenerationFollower
from imagefinder.config import ApiSettings


@dataclass
class Model:
    name: str
    version: str


@dataclass
class StandIn:
    model: Model
    closed: bool = field(default=False)

    def close(self) -> None:
        self.closed = True


class QuickFollower(GenerationFollower):
    POLL_S = 0.02
    RETIRE_AFTER_S = 0.05
    RETRY_FIRST_S = 0.2
    RETRY_MAX_S = 0.4


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_generation_that_fails_to_load_is_tried_again_until_it_loads() -> None:
    app = FastAPI()
    app.state.settings = ApiSettings(micro_batch=False)
    app.state.batchers = {}
    app.state.service = None
    app.state.load_error = None
    token = ["g0001"]
    loads: list[float] = []
    failures = [RuntimeError("registry out of reach")] * 2

    def factory() -> StandIn:
        loads.append(time.monotonic())
        if token[0] == "g0002" and failures:
            raise failures.pop()
        return StandIn(Model("encoder", token[0]))

    follower = QuickFollower(app, factory, lambda: token[0])  # type: ignore[arg-type]
    follower.start()
    try:
        wait_for(lambda: app.state.service is not None)
        first = app.state.service
        token[0] = "g0002"
        wait_for(lambda: app.state.service.model.version == "g0002")
        wait_for(lambda: first.closed)
        time.sleep(0.3)  # loaded: no more attempts
    finally:
        follower.stop()
    assert len(loads) == 4  # the first generation, two failures, the load that worked
    # The attempts after a failure wait, longer each time, instead of one per poll.
    assert loads[2] - loads[1] >= 0.2 and loads[3] - loads[2] >= 0.4
