"""Spot-aware placement (issue 30, part 4): nodes labelled ``ray.io/market-type: spot`` train trials but hold none of
the sweep's bookkeeping (the controller's run folder, the data-parallel trials' drivers), and ``visionsweep status``
says which trials run on spot capacity. The autoscaling test (tests/test_autoscaling.py) runs the whole of it on a
cluster whose GPU node type is spot."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cluster.capacity import OFF_SPOT, controller_problem, driver_places, market, spot_node_types, spot_nodes
from cluster.notice import CLOUDS
from scheduler.resources import DRIVER_CPUS, TrialResources
from scheduler.status import capacity, format_status, read_status
from tests.metadata_server import MetadataServer
from trainers.engine import _spot_workers
from trainers.launch import Group

ROOT = Path(__file__).resolve().parent.parent
SPOT = {"ray.io/market-type": "spot"}


def test_a_node_is_spot_by_rays_market_label_and_on_demand_otherwise():
    assert market(SPOT) == "spot" and market({"ray.io/market-type": "SPOT"}) == "spot"
    assert market({"ray.io/market-type": "on-demand"}) == "on-demand"
    assert market({}) == market(None) == "on-demand"  # a cluster that marks nothing runs as before
    types = {"gpu-worker": {"resources": {"GPU": 1}, "labels": {}},
             "gpu-worker-spot": {"resources": {"GPU": 1}, "labels": SPOT}}
    assert spot_node_types(types) == ["gpu-worker-spot"]


def test_a_controller_on_a_spot_node_keeps_no_run_folder_there():
    assert controller_problem({"ray.io/market-type": "on-demand"}, False, "runs/a") is None
    level, why = controller_problem(SPOT, False, "runs/a")
    assert level == "error"
    assert "runs/a" in why and "--output az://" in why and "--entrypoint-label-selector" in why
    level, why = controller_problem(SPOT, True, "az://runs/a")
    assert level == "warning" and "visionsweep resume az://runs/a" in why


def test_a_driver_needs_an_on_demand_place_running_or_launchable():
    nodes = [{"NodeID": "head", "Alive": True, "Labels": {}, "Resources": {"CPU": 0}},
             {"NodeID": "s1", "Alive": True, "Labels": SPOT, "Resources": {"CPU": 8, "GPU": 1}},
             {"NodeID": "d1", "Alive": False, "Labels": {}, "Resources": {"CPU": 8}}]
    types = {"gpu-worker-spot": {"resources": {"CPU": 8, "GPU": 1}, "labels": SPOT}}
    assert spot_nodes(nodes) == ["s1"]
    assert driver_places(nodes, types, DRIVER_CPUS) == []  # a head without CPUs, a spot node, a dead node
    types["cpu-worker"] = {"resources": {"CPU": 2}, "labels": {}}
    assert driver_places(nodes, types, DRIVER_CPUS) == ["cpu-worker"]
    nodes[0]["Resources"]["CPU"] = 4
    assert driver_places(nodes, types, DRIVER_CPUS) == ["head", "cpu-worker"]


def test_a_data_parallel_trials_driver_asks_for_a_node_that_is_not_spot():
    group = Group(workers=2, use_gpu=True)
    pgf = TrialResources(group, DRIVER_CPUS, 0.0, True).placement()
    assert pgf.bundles == [{"CPU": DRIVER_CPUS}]
    assert pgf._bound.kwargs["bundle_label_selector"] == [OFF_SPOT]
    # a one-worker trial trains itself: it goes where its GPU is, spot or not
    assert TrialResources(Group(), 2.0, 1.0, True).placement() == {"cpu": 2.0, "gpu": 1.0}


def test_each_evaluation_counts_the_workers_on_spot_nodes():
    single = SimpleNamespace(distributed=False)
    assert _spot_workers(None, single, torch.device("cpu")) is None
    assert _spot_workers(SimpleNamespace(spot=None), single, torch.device("cpu")) is None  # outside Ray
    assert _spot_workers(SimpleNamespace(spot=True), single, torch.device("cpu")) == 1
    assert _spot_workers(SimpleNamespace(spot=False), single, torch.device("cpu")) == 0
    assert capacity({"spot_workers": 2, "workers": 2}) == "spot"
    assert capacity({"spot_workers": 1, "workers": 4}) == "1/4 spot"
    assert capacity({"spot_workers": 0}) == "on-demand"
    assert capacity({"accuracy": 0.5}) is None


def _trial(run: Path, tid: str, rows: list[dict], status: str) -> None:
    d = run / "trials" / tid
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"sampled": {}, "fixed": {"number_of_epochs": 3}, "default": {}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "status.json").write_text(json.dumps({"status": status, "started": 1000.0}))


def test_status_says_which_trials_run_on_spot_capacity(tmp_path):
    run = tmp_path / "run"
    _trial(run, "t_spot", [{"epoch": 1, "accuracy": 0.4, "spot_workers": 1}], "running")
    # preempted on spot, then resumed on an on-demand node: where it runs now counts
    _trial(run, "t_moved", [{"epoch": 1, "accuracy": 0.5, "spot_workers": 2, "workers": 2},
                            {"epoch": 2, "accuracy": 0.6, "spot_workers": 0, "workers": 2}], "running")
    _trial(run, "t_mixed", [{"epoch": 1, "accuracy": 0.3, "spot_workers": 1, "workers": 2}], "completed")
    (run / "sweep.json").write_text(json.dumps({"primary_metric": "accuracy", "total_trials": 3, "started": 1000.0,
                                                "updated": 1100.0}))
    st = read_status(run, now=1100.0)
    assert {r.trial_id: r.capacity for r in st.trials} == {"t_spot": "spot", "t_moved": "on-demand",
                                                           "t_mixed": "1/2 spot"}
    text = format_status(st)
    assert "spot capacity: 2 trial(s) trained on spot nodes, 1 running now (t_spot)" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("t_")}
    assert " spot " in lines["t_spot"] and " on-demand " in lines["t_moved"] and " 1/2 spot " in lines["t_mixed"]
    assert "capacity" in text.splitlines()[4]

    # a sweep with nothing on spot shows no capacity column
    plain = tmp_path / "plain"
    _trial(plain, "t", [{"epoch": 1, "accuracy": 0.4, "spot_workers": 0}], "running")
    assert "capacity" not in format_status(read_status(plain, now=1100.0))


# A real Ray node labelled as given: the driver's placement group (from TrialResources.placement) next to a plain
# one of the same size submitted after it. Prints whether each was placed once the plain one is.
PLACE = textwrap.dedent("""
    import json, sys
    import ray
    from ray.util.placement_group import placement_group, placement_group_table
    from scheduler.resources import DRIVER_CPUS, TrialResources
    from trainers.launch import Group
    from trainers.preemption import LeaveNotice
    ray.init(num_cpus=2, labels=json.loads(sys.argv[1]), include_dashboard=False, logging_level="ERROR")
    driver = TrialResources(Group(workers=2), DRIVER_CPUS, 0.0, False).placement()()
    plain = placement_group([{"CPU": DRIVER_CPUS}])
    ray.get(plain.ready(), timeout=60)
    notice = LeaveNotice.of_this_node()
    notice.close()
    print(json.dumps({"driver": placement_group_table(driver)["state"], "spot": notice.spot}))
""")


@pytest.mark.ray
@pytest.mark.parametrize("labels, placed", [({"ray.io/market-type": "spot"}, False),
                                            ({"ray.io/market-type": "on-demand"}, True), ({}, True)])
def test_ray_places_a_driver_on_any_node_but_a_spot_one(labels, placed):
    out = subprocess.run([sys.executable, "-c", PLACE, json.dumps(labels)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # the plain group is placed (the node has room); the driver's only off spot
    assert (seen["driver"] == "CREATED") is placed, seen
    assert seen["spot"] is (labels == SPOT)  # what each evaluation's spot_workers counts


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_each_clouds_preemption_notice_is_read_from_its_metadata_endpoint(cloud):
    read = CLOUDS[cloud][0]
    with MetadataServer(lead_s=120) as md:
        md.other_events = [{"EventId": "E0", "EventType": "Preempt", "Resources": ["another-vm"],
                            "NotBefore": "Mon, 07 Dec 2026 08:00:00 GMT"}]
        assert read(md.url) is None  # no notice yet (Azure: another VM's event is not this one's)
        taken = md.preempt()
        notice = read(md.url)
        assert notice is not None and md.reads >= 2
        if cloud == "gcp":  # the metadata server says only that it is preempted: about 30 s
            assert notice.deadline == pytest.approx(time.time() + 30, abs=5)
        else:
            assert notice.deadline == taken
    with pytest.raises(OSError):  # the endpoint gone: the watcher's loop tries again at the next poll
        read(md.url)
