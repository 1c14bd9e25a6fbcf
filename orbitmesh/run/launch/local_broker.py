"""The run's broker as a local launcher sees it: outages it was asked for, deaths it was not.

A ``broker_outage`` fault stops the embedded broker and starts it again after the fault's span.
A death nobody asked for (the embedded broker's process gone, an external broker or a cluster
member unreachable) is named on stderr and charged to one unplanned event,
:data:`UNPLANNED_BROKER_ID`, which the summary lists with the faults; the embedded broker is
restarted, and the run stops only if that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

from broker.client import MqttTransport
from broker.embedded import EmbeddedBroker
from broker.url import BrokerURL
from orbitmesh.core.faults import Fault
from orbitmesh.errors import BrokerError
from orbitmesh.run.launch.cluster_watch import MemberWatch, member_answers

BROKER_POLL_S = 0.2
"""How often the launcher checks that the embedded broker it started is still alive."""
UNPLANNED_BROKER_ID = "unplanned_broker_outage"
"""The event a broker death nobody asked for is charged to (workers drop with this id)."""


class BrokerWatch:
    """Carries out broker outages and watches the broker for deaths nobody asked for."""

    def __init__(self, broker: EmbeddedBroker | None, stop: asyncio.Event) -> None:
        self.broker = broker
        """The embedded broker this run started; None with an external broker or cluster."""
        self.stop = stop
        self.stopping = False
        """True while a broker_outage fault stops the broker: it sends every will then."""
        self.lost: dict[str, Any] | None = None
        """The unplanned event of a broker loss, for the summary (None: none was lost)."""

    async def outage(self, fault: Fault, info: dict[str, Any], transport: MqttTransport,
                     speed: float) -> None:
        """Stop the embedded broker for the fault's ``for_s`` (scenario seconds), then restart."""
        assert self.broker is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(transport.flush(), 1.0)  # workers learn the fault id
        info["stopped_wall"] = time.time()
        self.stopping = True
        try:
            await asyncio.to_thread(self.broker.stop)
            await asyncio.sleep(float(fault.spec.for_s or 0.0) / speed)
            await asyncio.to_thread(self.broker.restart)
        finally:
            self.stopping = False
        info["restarted_wall"] = time.time()

    async def watch_embedded(self, scenario_s: Callable[[], float],
                             record_pid: Callable[[int], None]) -> None:
        """Restart an embedded broker that died unasked and charge the gap to an unplanned
        event (not to a broker_outage fault nobody injected)."""
        assert self.broker is not None
        pid = self.broker.pid
        while True:
            await asyncio.sleep(BROKER_POLL_S)
            if self.stopping or self.broker.running or self.stop.is_set():
                # After Ctrl-C (a terminal signals the whole process group, the broker too)
                # nothing is unplanned: the run's end restarts a broker it still needs.
                pid = self.broker.pid or pid
                continue
            code = self.broker.returncode
            how = ("exit status unknown" if code is None else f"signal {-code}" if code < 0
                   else f"exit code {code}")
            start_s, died = round(scenario_s(), 3), time.time()
            event = self.lost = self.lost or {
                "id": UNPLANNED_BROKER_ID, "kind": "broker_lost", "origin": "unplanned",
                "start_s": start_s, "end_s": None, "target": {}, "outages": []}
            print(f"error: the embedded broker (pid {pid}) died at t={start_s:g} s ({how}); "
                  "restarting it", file=sys.stderr)
            self.stopping = True  # no will from before the restart marks a worker lost
            try:
                await asyncio.to_thread(self.broker.restart)
            except BrokerError as exc:
                event["describe"] = (f"embedded broker (pid {pid}) died at t={start_s:g} s "
                                     f"({how}) and could not be restarted: {exc}")
                print(f"error: {event['describe']}; stopping the run", file=sys.stderr)
                self.stop.set()
                return
            finally:
                self.stopping = False
            event["end_s"] = round(scenario_s(), 3)
            event["outages"].append({"pid": pid, "exit": how, "start_s": start_s,
                                     "end_s": event["end_s"],
                                     "restart_wall_s": round(time.time() - died, 3)})
            event["describe"] = "; ".join(
                f"embedded broker (pid {o['pid']}) died at t={o['start_s']:g} s ({o['exit']}), "
                f"restarted after {o['restart_wall_s']:g} s wall" for o in event["outages"])
            pid = self.broker.pid
            if pid is not None:
                record_pid(pid)

    async def watch_members(self, members: list[BrokerURL], transport: MqttTransport,
                            scenario_s: Callable[[], float]) -> None:
        """Name an external broker's loss, or a cluster member's (the run goes on)."""

        async def connected(_member: BrokerURL) -> bool:
            return transport.connected.is_set()

        watch = MemberWatch(members, UNPLANNED_BROKER_ID, scenario_s,
                            on_event=lambda event: setattr(self, "lost", event),
                            answers=member_answers if len(members) > 1 else connected)
        await watch.run(self.stop.is_set)
