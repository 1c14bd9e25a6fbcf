"""Our own fuzzer over every MQTT topic family (seeded; ORBITMESH_FUZZ_CASES cases per test,
ORBITMESH_FUZZ_SEED picks another seed; `make fuzz` runs thousands).

1. Every decoder, fed mutated payloads (tests/fuzz_payloads.py): it returns a checked message or
   raises ValueError, nothing else; what it accepts survives its own encoder.
2. A whole run on the memory broker and virtual time (controller, the launcher's listener, two
   workers) while a hostile client publishes junk on every family: nothing escapes a handler,
   no traceback is logged, every payload is counted exactly once by each receiver, and the run's
   books are the same as without the junk (so conservation holds).
3. The same against a real mosquitto (``--broker-insecure``, so the hostile client may publish
   everywhere), for a few seconds of flooding: the run finishes, summary.json is right, no
   traceback in the worker logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nodes.worker import Worker
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.protocol.messages import ControlCommand, EndMarker, WorkerStatus
from orbitmesh.protocol.transport import MemoryBroker, MemoryTransport
from orbitmesh.protocol.wire import (
    MAX_BATCH_FRAMES,
    WIRE_VERSION,
    Topics,
    decode_batch,
    new_frame,
)
from orbitmesh.run.controller import Controller
from orbitmesh.run.launch.local_run import LocalRun
from orbitmesh.run.report import build_summary
from tests.fuzz_payloads import (
    BLOB_B,
    CASES,
    FAMILIES,
    SEED,
    decoders,
    must_cases,
    mutate,
    synthetic_samples,
)
from tests.virtual_time import LoopWall, VirtualTimeLoop

SCENARIO = Path(__file__).parent / "data" / "faults" / "detour.yaml"
WORKERS = 2
RUN = "fuzz"
JUNK_FROM_S, JUNK_UNTIL_S = 1.0, 12.0
"""Scenario seconds over which the junk is spread (the run lasts 14 s)."""
CLEARS_RETAINED = ("clock", "status")
"""Families where an empty payload is the retained message cleared, not a malformed one."""


def _topology() -> Topology:
    return build_topology(load_scenario(SCENARIO))


def _reproduce(case: int, family: str, payload: bytes) -> str:
    return (f"ORBITMESH_FUZZ_SEED={SEED} case {case}: {family} payload "
            f"{payload[:120]!r}{' ...' if len(payload) > 120 else ''} ({len(payload)} bytes)")


# --- 1. decoders ------------------------------------------------------------------------------

def _round_trips(decoded: object) -> bool:
    encode = getattr(decoded, "encode", None)
    if encode is None or isinstance(decoded, EndMarker):
        return True
    return type(decoded).decode(encode()) == decoded  # type: ignore[attr-defined, no-any-return]


def test_every_decoder_refuses_with_value_error_or_accepts_cleanly() -> None:
    n_nodes = _topology().n_nodes
    decode = decoders(n_nodes)
    samples = synthetic_samples(n_nodes)
    rng = random.Random(SEED)
    cases = must_cases() + [(f, mutate(rng, f, samples)) for f in
                            (rng.choice(FAMILIES) for _ in range(CASES))]
    refused = 0
    for case, (family, payload) in enumerate(cases):
        try:
            decoded = decode[family](payload)
            EndMarker.sniff(payload, WIRE_VERSION)  # frames topics try it first: never raises
        except ValueError:
            refused += 1
            continue
        except Exception as exc:  # the finding: say how to reproduce it
            pytest.fail(f"{type(exc).__name__}: {exc} — {_reproduce(case, family, payload)}")
        if family not in ("frames", "inbox", "state"):
            assert _round_trips(decoded), _reproduce(case, family, payload)
    print(f"{len(cases)} cases, {refused} refused")
    assert refused >= len(cases) // 2  # the mutations are hostile, not mostly valid


def test_one_bad_frame_leaves_the_rest_of_its_batch() -> None:
    """NaN/huge sizes, string times and hops, bad TTLs (issue 16) cost that one frame only."""
    import msgpack

    n_nodes = _topology().n_nodes
    decode = decoders(n_nodes)["frames"]
    (good,) = synthetic_samples(n_nodes)["frames"][:1]
    _v, items = msgpack.unpackb(good, raw=False)
    poisons = [(5, float("nan")), (5, 10**18), (6, "x"), (7, "3"), (8, -2), (8, 10**6),
               (6, float("inf")), (3, n_nodes), (4, -1), (0, None)]
    for field, value in poisons:
        bad = [items[0][0], list(items[0][1])]
        bad[1][field] = value
        payload = msgpack.packb([WIRE_VERSION, [bad, *items]])
        kept, why = decode(payload)  # type: ignore[misc]
        assert (len(kept), len(why)) == (len(items), 1), (field, value, why)


def test_a_huge_batch_of_tiny_frames_is_refused_whole_and_at_once() -> None:
    """A 10 MB batch of 20-byte bad frames once cost a worker 5.6 s and 180 MB to check."""
    import msgpack

    n = _topology().n_nodes
    frame = new_frame(1, 0, 0, 0, n - 1, 100, 1.8e9)
    kept, refused = decode_batch(msgpack.packb([WIRE_VERSION, [[n - 1, frame]]
                                                * MAX_BATCH_FRAMES]), n)
    assert (len(kept), refused) == (MAX_BATCH_FRAMES, [])
    blob = msgpack.packb([WIRE_VERSION, [[0, [0] * 17]] * (BLOB_B // 20)])
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="not a frame batch"):
            decode_batch(blob, n)
        _, peak_b = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_b < len(blob) // 10  # refused from its header: the frames are never built


def test_a_long_outbox_leaves_in_batches_a_receiver_takes() -> None:
    from nodes.runtime import NodeRuntime
    from orbitmesh.core.placement import place

    topology = _topology()
    owner = place(topology, WORKERS)
    sent: list[tuple[int, bytes]] = []
    rt = NodeRuntime(topology, 0, owner, send=lambda k, p: sent.append((k, p)), speed=1.0,
                     seed=0)
    there = int(np.flatnonzero(owner == 1)[0])
    count = 2 * MAX_BATCH_FRAMES + 5
    rt.outbox[1] = [(there, new_frame(i, 0, 0, 0, there, 100, 1.8e9)) for i in range(count)]
    rt.flush()
    assert len(sent) == 3 and {k for k, _p in sent} == {1}
    decoded = [decode_batch(p, topology.n_nodes) for _k, p in sent]
    assert sum(len(kept) for kept, _bad in decoded) == count
    assert all(bad == [] for _kept, bad in decoded)


# --- 2. a run on the memory broker -------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """What one in-process run counted."""

    summary: dict[str, Any]
    malformed_by_topic: dict[str, int]
    status_refused: int
    control_errors: int
    expected: dict[str, int]


def _junk_topic(rng: random.Random, topics: Topics, topology: Topology, family: str) -> str:
    k = rng.randrange(WORKERS)
    node = rng.choice(topology.node_ids)
    return {"frames": topics.worker_frames(k), "status": topics.worker_status(k),
            "inbox": topics.node_inbox(node)}.get(family, f"{topics.root}/{family}")


def hostile_payloads(topology: Topology, seed: int, cases: int) -> list[tuple[str, bytes]]:
    """(family, payload) that the family's decoder refuses: what a receiver must count."""
    decode = decoders(topology.n_nodes)
    samples = synthetic_samples(topology.n_nodes)
    rng = random.Random(seed)
    out = [(f, p) for f, p in must_cases()]
    while len(out) < cases + len(must_cases()):
        family = rng.choice(FAMILIES)
        payload = mutate(rng, family, samples)
        if not payload and family in CLEARS_RETAINED:
            continue
        try:
            decode[family](payload)
        except ValueError:
            if EndMarker.sniff(payload, WIRE_VERSION) is None:
                out.append((family, payload))
    return out


async def _until(condition: Any, timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110  # virtual time: polling costs nothing
            await asyncio.sleep(0.01)


async def memory_run(out: Path, junk: list[tuple[str, bytes]], seed: int) -> Outcome:
    """The detour scenario on the memory broker; ``junk`` spread over the run."""
    loop = asyncio.get_running_loop()
    wall = LoopWall(loop)
    topology = _topology()
    scenario = topology.scenario
    topics = Topics(RUN)
    broker = MemoryBroker()
    rng = random.Random(seed)
    expected = dict.fromkeys((*FAMILIES, "status@launcher", "control@controller"), 0)
    transports: list[MemoryTransport] = []
    async with MemoryTransport(broker, "controller") as control, asyncio.TaskGroup() as tg:
        controller = Controller(topology, control, topics, duration_s=scenario.duration_s,
                                speed=scenario.speed, out_dir=out, wall=wall, workers=WORKERS)
        launcher = LocalRun(topology, out, RUN, None, WORKERS,  # type: ignore[arg-type]
                            scenario.duration_s, scenario.speed, None)
        launcher.transport, launcher.controller = control, controller  # type: ignore[assignment]
        await control.subscribe(topics.worker_status_all, topics.control)
        listener = tg.create_task(launcher._listen(), name="launcher.listen")
        workers = []
        for k in range(WORKERS):
            will = (topics.worker_status(k), WorkerStatus(k, "lost").encode(), True)
            transport = MemoryTransport(broker, f"w{k}", will=will)
            transports.append(transport)
            worker = Worker(topology, worker=k, workers=WORKERS, run_id=RUN, transport=transport,
                            out_dir=out, duration_s=scenario.duration_s, speed=scenario.speed,
                            wall=wall)
            workers.append(worker)

            async def serve(w: Worker = worker, t: MemoryTransport = transport) -> None:
                async with t:
                    await w.run()

            tg.create_task(serve(), name=f"worker{k}")
        await _until(lambda: all(getattr(launcher.status.get(k), "state", None)
                                 in ("ready", "running") for k in range(WORKERS)))
        ticking = tg.create_task(controller.run(), name="controller")
        async with MemoryTransport(broker, "hostile") as hostile:
            for i, (family, payload) in enumerate(junk):
                at_s = JUNK_FROM_S + (JUNK_UNTIL_S - JUNK_FROM_S) * i / max(1, len(junk))
                await _until(lambda at=at_s: controller.scenario_s() >= at)
                topic = _junk_topic(rng, topics, topology, family)
                # Each receiver that subscribes to the topic must count it once.
                expected[family] += sum(t.wants(topic) for t in transports)
                expected["status@launcher"] += family == "status"
                expected["control@controller"] += family == "control"
                hostile.publish(topic, payload, retain=rng.random() < 0.3)
        try:
            await ticking
            control.publish(topics.launcher, ControlCommand("finish").encode())
            await _until(lambda: all(launcher.status[k].state == "done"
                                     for k in range(WORKERS)))
        finally:  # a failing run must not leave links.msgpack open for the next test
            controller.close()
            listener.cancel()
    meta = {"id": RUN, "speed": scenario.speed, "duration_s": scenario.duration_s,
            "t0_wall": controller.t0_wall}
    summary = build_summary(out, scenario, meta, {}, WORKERS,
                            [f.describe() for f in controller.faults])
    counted: dict[str, int] = {}
    for w in workers:
        for family, n in w.stats.malformed_by_topic.items():
            counted[family] = counted.get(family, 0) + n
    return Outcome(summary, counted, launcher.malformed_status, controller.control_errors,
                   expected)


def _in_virtual_time(out: Path, junk: list[tuple[str, bytes]], seed: int) -> Outcome:
    out.mkdir()
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(memory_run(out, junk, seed))
    finally:
        loop.close()


def _books(summary: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(c["flow"], c["offered"], c["delivered"], c["dropped"], c["in_flight"])
            for c in summary["conservation"]]


def test_junk_on_every_topic_family_during_a_run_is_counted_and_changes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topology = _topology()
    junk = hostile_payloads(topology, SEED, CASES)
    clean = _in_virtual_time(tmp_path / "clean", [], SEED)
    with caplog.at_level(logging.WARNING):
        started = time.perf_counter()
        fuzzed = _in_virtual_time(tmp_path / "fuzzed", junk, SEED)
        real_s = time.perf_counter() - started
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[:3]
    sent = {f: sum(1 for g, _p in junk if g == f) for f in FAMILIES}
    print(f"{len(junk)} hostile payloads {sent} in {real_s:.1f} s; counted "
          f"{fuzzed.malformed_by_topic}, {fuzzed.status_refused} statuses, "
          f"{fuzzed.control_errors} control errors")
    # Exactly once per receiver: the workers by family, the launcher statuses, the controller
    # commands (each answered on control/error).
    assert clean.malformed_by_topic == {} and clean.control_errors == 0
    worker_families = {f: n for f, n in fuzzed.expected.items() if "@" not in f and n}
    assert fuzzed.malformed_by_topic == worker_families
    assert fuzzed.status_refused == fuzzed.expected["status@launcher"] == sent["status"]
    assert fuzzed.control_errors == fuzzed.expected["control@controller"] == sent["control"]
    assert fuzzed.summary["malformed_by_topic"] == worker_families
    # The junk changed nothing: the same books as the clean run, and they balance.
    assert fuzzed.summary["conservation_ok"], fuzzed.summary["conservation"]
    assert _books(fuzzed.summary) == _books(clean.summary)
    assert clean.summary["flows"][0]["delivered"] > 300


# --- 3. against a real mosquitto ---------------------------------------------------------------

FLOOD_S = 4.0


def _flood(port: int, run_id: str, topology: Topology, junk: list[tuple[str, bytes]],
           stop: threading.Event, sent: dict[str, int]) -> None:
    """Publish ``junk`` round and round until ``stop`` (a paho client, QoS 0)."""
    import paho.mqtt.client as mqtt

    topics = Topics(run_id)
    rng = random.Random(SEED + 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hostile")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        i = 0
        while not stop.is_set():
            family, payload = junk[i % len(junk)]
            if len(payload) > 1 << 20 and sent.get("big", 0) >= 4:
                i += 1
                continue  # a few 10 MB blobs; the rest small, so the flood is a flood
            sent["big"] = sent.get("big", 0) + (len(payload) > 1 << 20)
            client.publish(_junk_topic(rng, topics, topology, family), payload, qos=0)
            sent[family] = sent.get(family, 0) + 1
            i += 1
            time.sleep(0.002)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.broker
@pytest.mark.slow
def test_a_hostile_client_floods_every_family_of_a_live_run(tmp_path: Path) -> None:
    from tests.conftest import require_mosquitto
    from tests.test_live import PROJECT, wait_for_clock

    require_mosquitto()
    run_dir = tmp_path / "run"
    topology = _topology()
    stop, sent = threading.Event(), {}  # type: ignore[var-annotated]
    junk = hostile_payloads(topology, SEED + 1, max(CASES, 300))
    proc = subprocess.Popen(
        [sys.executable, "-m", "orbitmesh", "run", str(SCENARIO), "--duration", "20", "--speed",
         "1", "--workers", str(WORKERS), "--out", str(run_dir), "--run-id", "flooded", "--quiet",
         "--broker-insecure"], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        wait_for_clock(run_dir, "flooded", timeout_s=60.0)
        port = int(json.loads((run_dir / "run.json").read_text())["broker"].rsplit(":", 1)[1])
        flooder = threading.Thread(target=_flood, args=(port, "flooded", topology, junk, stop,
                                                        sent))
        flooder.start()
        time.sleep(FLOOD_S)
        stop.set()
        flooder.join(timeout=30)
        _out, err = proc.communicate(timeout=180)
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    counted = summary["malformed_by_topic"]
    print(f"sent {sent}; counted {counted}, control errors {summary['run']['control_errors']}")
    assert summary["conservation_ok"], summary["conservation"]
    assert sum(sent.get(f, 0) for f in FAMILIES) > 500
    assert summary["flows"][0]["delivered"] > 0
    # Each payload once per receiver: both workers take clock, state, faults and launcher; one
    # worker hosts each frames topic and each inbox; the launcher reads statuses.
    for family, receivers in (("clock", 2), ("state", 2), ("faults", 2), ("launcher", 2),
                              ("frames", 1), ("inbox", 1), ("status", 1)):
        assert counted.get(family, 0) == receivers * sent.get(family, 0) > 0, family
    assert summary["run"]["control_errors"] == sent.get("control", 0) > 0
    assert "Traceback" not in err.decode()
    for log in run_dir.glob("worker-*.log"):
        assert "Traceback" not in log.read_text(), log
