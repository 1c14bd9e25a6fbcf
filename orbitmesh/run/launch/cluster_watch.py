"""Watch an external broker (or a cluster's members) during a run; name each loss nobody injected.

The launcher does not own an external broker's processes. A cluster's members are probed on
their MQTT ports (a TCP connect every ``poll_s``; no MQTT session, which on NATS would cost a
JetStream lookup); a single broker is judged by the launcher's own connection to it (no probe
connections filling its log), down from the moment that connection is lost until it is back.
A member that stops accepting connections is an outage of the run's
``unplanned_broker_outage`` event (kind ``broker_lost``, origin ``unplanned``), listed in the
summary: the frames workers could not hand over while they failed over are dropped with that
id (nodes/runtime.py), and frames that were inside the member are charged to it like a
process fault's (the summary's ``lost_to_process_faults``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from broker.url import BrokerURL

POLL_S = 0.2
PROBE_TIMEOUT_S = 0.5


async def member_answers(url: BrokerURL, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True if something accepts a TCP connection on the member's MQTT port."""
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(url.host, url.port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def member_urls_for(members: list[BrokerURL], worker: int) -> list[BrokerURL]:
    """The members in the order worker ``worker`` tries them: its own (k mod M) first."""
    first = worker % len(members)
    return members[first:] + members[:first]


class MemberWatch:
    """Probes every member; fills ``event`` (None until a member is lost) as outages happen."""

    def __init__(self, members: list[BrokerURL], event_id: str,
                 scenario_s: Callable[[], float], *, poll_s: float = POLL_S,
                 on_event: Callable[[dict[str, Any]], None] = lambda _event: None,
                 answers: Callable[[BrokerURL], Awaitable[bool]] = member_answers) -> None:
        self.members = members
        self.answers = answers
        """Whether a member is up (a TCP probe unless the caller knows better)."""
        self.event_id = event_id
        self.scenario_s = scenario_s
        self.poll_s = poll_s
        self.on_event = on_event
        """Called with ``event`` once, when the first member is lost (it is updated in place)."""
        self.event: dict[str, Any] | None = None
        self._down: dict[int, dict[str, Any]] = {}

    async def run(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Probe until cancelled; ``stopping()`` True means the run is ending (not an outage)."""
        while True:
            answers = await asyncio.gather(*(self.answers(m) for m in self.members))
            if not stopping():
                for index, up in enumerate(answers):
                    self._note(index, up)
            await asyncio.sleep(self.poll_s)

    def _note(self, index: int, up: bool) -> None:
        outage = self._down.get(index)
        if not up and outage is None:
            self._lost(index)
        elif up and outage is not None:
            outage["end_s"] = round(self.scenario_s(), 3)
            outage["back_wall_s"] = round(time.time() - outage["detected_wall"], 3)
            del self._down[index]
            self._describe()

    def _lost(self, index: int) -> None:
        start_s = round(self.scenario_s(), 3)
        url = self.members[index]
        if self.event is None:
            self.event = {"id": self.event_id, "kind": "broker_lost", "origin": "unplanned",
                          "start_s": start_s, "end_s": None, "target": {}, "outages": []}
            self.on_event(self.event)
        event = self.event
        outage = {"member": index, "address": url.address, "start_s": start_s, "end_s": None,
                  "detected_wall": time.time()}
        event["outages"].append(outage)
        self._down[index] = outage
        self._describe()
        if len(self.members) == 1:
            print(f"error: the broker ({url.address}) stopped answering at t={start_s:g} s; the "
                  "run's clients reconnect when it is back", file=sys.stderr, flush=True)
        else:
            print(f"error: broker member {index} ({url.address}) of {len(self.members)} stopped "
                  f"answering at t={start_s:g} s; its clients fail over to the others",
                  file=sys.stderr, flush=True)

    def _describe(self) -> None:
        assert self.event is not None
        ends = [o["end_s"] for o in self.event["outages"]]
        self.event["end_s"] = None if None in ends else max(ends)
        self.event["describe"] = "; ".join(
            (f"broker member {o['member']} ({o['address']}) of {len(self.members)}"
             if len(self.members) > 1 else f"the broker ({o['address']})") + " lost at "
            f"t={o['start_s']:g} s" + ("" if o["end_s"] is None else
                                       f", back at t={o['end_s']:g} s")
            for o in self.event["outages"])
