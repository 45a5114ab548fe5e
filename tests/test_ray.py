"""A study on a local Ray instance: same results layout as the local executor."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from moopt.cli import main

ray = pytest.importorskip("ray")

SPACE = ("training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}\n  num_train_epochs: {epochs}\n"
         "lora:\n  r: {type: categorical, values: [4, 8]}\ndata:\n  max_seq_length: 32\n")


def ray_study(tiny_model, tiny_data, tmp_path, *options, epochs=2, env=None):
    """``moopt optimize --executor ray`` on a local Ray instance of 2 CPUs whose workers get ``env``; (result, its
    output folder). Ray is shut down after it."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("{epochs}", str(epochs)))
    out = tmp_path / "hpo"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             runtime_env={"env_vars": env} if env else None)
    try:
        return CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                         "--validation_file", str(tiny_data["val"]), "--output_dir", str(out),
                                         "--search_space", str(space), "--executor", "ray", *options]), out
    finally:
        ray.shutdown()


def test_ray_study_on_a_local_instance(tiny_model, tiny_data, tmp_path):
    r, out = ray_study(tiny_model, tiny_data, tmp_path, "--num_trials", "4", "--parallel_trials", "2", "--no-baseline",
                       "--pruning_factor", "2", "--optimization_objective", "multi:eval_loss,eval_accuracy")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv")
    assert list(df.number) == [0, 1, 2, 3]
    assert set(df.state) <= {"COMPLETE", "PRUNED"} and (df.state == "COMPLETE").sum() >= 1
    pruned = df[df.state == "PRUNED"]  # rung decisions travel through the Ray actor
    # none may be pruned (then pandas reads the empty column as float): cast before matching
    assert pruned.error.astype(str).str.match(r"pruned at step \d+").all() and (pruned.steps < pruned.total_steps).all()
    assert (out / "trial_results" / "trial_0" / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "best_config.yaml").is_file()
    # each trial's warnings and errors in its own log.txt, as with the local executor (they went to Ray's logs)
    assert all((out / "trial_results" / f"trial_{n}" / "log.txt").is_file() for n in df.number)


def test_ray_kills_a_hanging_trial_and_records_the_stall(tiny_model, tiny_data, tmp_path):
    r, out = ray_study(tiny_model, tiny_data, tmp_path, "--num_trials", "2", "--no-baseline", "--stall_timeout", "8",
                       env={"MOOPT_INJECT_FAULT": "0:hang@2"})
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv").set_index("number")
    assert df.loc[0, "state"] == "FAIL" and df.loc[0, "steps"] == 1
    assert df.loc[0, "error"].startswith("stalled: no optimizer step for ")
    assert df.loc[0, "error"].endswith("(limit 8 s: --stall_timeout)")
    assert df.loc[1, "state"] == "COMPLETE"


def test_ray_runs_the_baseline_and_the_memory_probes_where_trials_run(tiny_model, tiny_data, tmp_path, monkeypatch):
    """With Ray, the driver may be a head node without GPUs: the base model's evaluation and the memory gate's
    probes run as Ray tasks, where trials run, not on the driver. Here Ray's workers evaluate in bfloat16 and the
    driver would in float32, so the baseline's dtype says where it ran; each probe's measurement comes back."""
    from moopt.study.gate import MemoryGate

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(MemoryGate, "band", lambda self, trial: (1e6, 0.0))  # every configuration is probed
    r, out = ray_study(tiny_model, tiny_data, tmp_path, "--num_trials", "2", "--memory_constraint", "50", epochs=1,
                       env={"MOOPT_CPU_DTYPE": "bfloat16"})
    assert r.exit_code == 0, r.output
    assert "Base model (no fine-tuning, bfloat16): eval_loss=" in r.output
    assert json.loads((out / "baseline.json").read_text())["state"] == "COMPLETE"
    gates = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    gates = [e for e in gates if e["type"] == "memory_gate"]
    assert gates[0]["probed"] and gates[0]["reason"].startswith("probe measured ")  # (later ones: measured earlier)
    assert all(e["measured_gb"] > 0 and e["verdict"] == "fit" for e in gates)
    assert (pd.read_csv(out / "trials_summary.csv").state == "COMPLETE").all()


def test_a_probe_that_cannot_run_on_the_cluster_falls_back_to_the_estimate(tiny_model, tmp_path):
    """The gate's runner (Ray's ``call``) is asked for a GPU on cuda and the gate's threads; a task that fails (its
    node lost) is a failed probe: the estimate and its band decide, and nothing is cached."""
    from moopt.config import TrialConfig
    from moopt.study.gate import MemoryGate

    calls = []

    def runner(fn, *args, **kwargs):
        calls.append(kwargs)
        raise ConnectionError("node lost\nmore")

    gate = MemoryGate(tiny_model, device="cpu", kernels="auto", constraint_gb=50, threads=3, runner=runner,
                      cache_path=tmp_path / "cal.json")
    gate.band = lambda trial: (1e6, 0.0)
    trial = TrialConfig.from_dict({"data": {"max_seq_length": 32}})
    d = gate.decide(trial)
    assert calls and calls[0]["num_gpus"] == 0 and calls[0]["num_cpus"] == 3 and calls[0]["device"] == "cpu"
    assert d.probed and d.measured_gb is None and "probe task failed: ConnectionError: node lost" in d.reason
    assert not gate.cache.entry(gate.key(trial)).get("pairs")


def test_the_clusters_gpu_memory_is_read_on_each_gpu_node():
    """Ray's resources say how many GPUs a node has, not how large: a task pinned to each GPU node, asking for no
    CPU and no GPU, reads them there (NVML). Here a local instance declares one GPU and the reader is faked."""
    from moopt.memory.nvml import has_nvidia
    from moopt.study.ray_executor import RayExecutor

    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             resources={"accelerator_type:A100": 1})  # as Ray declares a node of A100s
    try:
        ex = RayExecutor()
        # NVML sees two GPUs, Ray was given one (ray start --num-gpus 1): trials can hold one
        assert ex.gpu_memory(reader=lambda: [79.6, 39.5]) == [(79.6, "A100")]
        assert ex.probe_kind is None  # one kind: a probe runs on any GPU
        if not has_nvidia()[0]:
            assert ex.gpu_memory() == []  # no driver on the node: its GPUs stay unknown

        def fails():
            raise RuntimeError("NVML")

        def hangs():
            import time

            time.sleep(60)

        assert ex.gpu_memory(reader=fails) == [] and ex.gpu_memory(reader=hangs, timeout_s=2) == []
        ex.close()
    finally:
        ray.shutdown()


def test_a_nodes_gpus_are_those_its_raylet_sees(monkeypatch):
    """``CUDA_VISIBLE_DEVICES=2,GPU-bb ray start``: the node's Ray GPUs are those two, in that order, not all NVML
    sees (a task asking for no GPU keeps the raylet's variable)."""
    from moopt.memory import nvml
    from moopt.memory.nvml import GpuInfo
    from moopt.study.ray_executor import _node_gpu_gib

    gib = 2**30
    gpus = [GpuInfo(i, "H100", (80 + 10 * i) * gib, 0, 0, uuid=f"GPU-{c}{c}{c}") for i, c in enumerate("abcd")]
    monkeypatch.setattr(nvml, "gpu_inventory", lambda: gpus)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _node_gpu_gib() == [80, 90, 100, 110]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-bb")
    assert _node_gpu_gib() == [100, 90]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what older Rays set in a task asking for no GPU
    assert _node_gpu_gib() == [80, 90, 100, 110]


def test_on_mixed_gpus_trials_and_probes_ask_ray_for_the_kind_that_holds_them(monkeypatch):
    """A cluster of 80 and 40 GiB GPUs: a trial that only the 80 GiB ones hold asks Ray for their kind
    (``accelerator_type``), and so does a probe (on the largest kind, an OOM is an OOM everywhere). Without that,
    Ray could give it a 40 GiB GPU, where it would run out of memory and be recorded infeasible for good."""
    from moopt.config import TrialConfig
    from moopt.records import TrialSpec
    from moopt.study import ray_executor
    from moopt.study.placement import Slot
    from moopt.study.ray_executor import RayExecutor, largest_kind

    assert largest_kind([(80.0, "H100"), (40.0, "A100")]) == "H100"
    assert largest_kind([(80.0, "A100"), (40.0, "A100")]) is None  # one kind: any GPU
    assert largest_kind([(80.0, None), (40.0, "A100")]) is None and largest_kind([]) is None

    def assigned(*args):
        return ray.get_runtime_context().get_assigned_resources()

    def trial_task(spec_json, channel, steady_heap):  # what the trial's task was given, as its result's metrics
        return {"number": spec_json["number"], "state": "COMPLETE", "metrics": assigned()}

    monkeypatch.setattr(ray_executor, "_run_trial_task", trial_task)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             resources={"accelerator_type:H100": 1})
    try:
        ex = RayExecutor()
        ex.probe_kind = "H100"  # as gpu_memory sets it on a cluster of 80 GiB H100s and 40 GiB A100s
        assert ex.call(assigned, num_gpus=1) == {"CPU": 1.0, "GPU": 1.0, "accelerator_type:H100": 0.001}
        assert "accelerator_type:H100" not in ex.call(assigned, num_gpus=0)  # a CPU probe: any node
        spec = TrialSpec(number=0, config=TrialConfig.from_dict({}), base_model="m", train_file="t", validation_file="v", output_dir="o")
        ex.submit(spec, Slot("cuda", 1, 0.79, "H100"))
        assert ex.next_result(timeout=60).metrics == {"CPU": 1.0, "GPU": 0.79, "accelerator_type:H100": 0.001}
        ex.submit(TrialSpec(**{**vars(spec), "number": 1}), Slot("cuda", 1, 0.4))
        assert ex.next_result(timeout=60).metrics == {"CPU": 1.0, "GPU": 0.4}
        ex.close()
    finally:
        ray.shutdown()


def test_probe_room_says_whether_a_whole_gpu_is_free_for_a_probe():
    """A probe asks Ray for a whole GPU: while trials hold a share of each, the study waits for one to end (and
    takes their results meanwhile) instead of blocking on the probe."""
    import time

    from moopt.study.ray_executor import RayExecutor

    def until(cond, timeout_s=20.0):
        end = time.time() + timeout_s
        while time.time() < end and not cond():
            time.sleep(0.1)
        return cond()

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             resources={"accelerator_type:H100": 1})
    try:
        ex = RayExecutor()
        assert until(ex.probe_room)
        held = ray.remote(num_gpus=0.3, num_cpus=0)(lambda: time.sleep(3)).remote()  # a trial on 30% of the GPU
        assert until(lambda: not ex.probe_room())
        ray.get(held)
        assert until(ex.probe_room)
        # on a mixed cluster the probe asks for the largest GPUs' kind: a free GPU of another kind is no room
        ex.probe_kind = "H100"
        assert ex.probe_room()
        ex.probe_kind = "A100"
        assert not ex.probe_room()
        ex.close()
    finally:
        ray.shutdown()


def test_probe_room_counts_whole_gpus_from_what_the_studys_trials_hold_not_rays_sum_of_fractions(monkeypatch):
    """Ray's free GPU figure adds fractions: two GPUs each 30% held read as 1.4 free, yet a probe (a whole GPU)
    would block the study on Ray. Each trial's task reports the GPUs Ray gave it; probe_room counts whole ones."""
    import time
    import types

    from moopt.config import TrialConfig
    from moopt.records import TrialSpec
    from moopt.study import ray_executor
    from moopt.study.placement import Slot
    from moopt.study.ray_executor import RayExecutor

    ex = object.__new__(RayExecutor)  # the arithmetic, on a faked cluster of one node with 2 GPUs
    ray_executor.ExecutorBase.__init__(ex)
    node = {"NodeID": "n1", "Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0, "accelerator_type:H100": 1.0}}
    ex.ray = types.SimpleNamespace(available_resources=lambda: {"GPU": 1.4}, nodes=lambda: [node])
    ex.probe_kind = None
    monkeypatch.setattr("ray._private.state.available_resources_per_node", lambda: {"n1": {"GPU": 1.4}})
    ex.gpus_held = {0: ("n1", ("0",)), 1: ("n1", ("1",))}
    assert not ex.probe_room()  # 1.4 free, but no GPU whole
    ex.gpus_held = {0: ("n1", ("0",)), 1: ("n1", ("0",))}
    assert ex.probe_room()  # both on GPU 0: GPU 1 is whole
    ex.gpus_held = {0: ("n1", ("0",)), 1: None}
    assert not ex.probe_room()  # trial 1 has not said where it is: it may hold GPU 1
    ex.gpus_held, ex.probe_kind = {}, "A100"
    assert not ex.probe_room()  # free, but not of the probe's kind

    monkeypatch.undo()  # Ray's own per-node figure from here on

    # a real task reports the node and GPU it was given
    def trial_task(spec_json, channel, steady_heap):
        ray_executor.report_placement(channel, spec_json["number"])
        time.sleep(3)
        return {"number": spec_json["number"], "state": "COMPLETE", "metrics": {}}

    monkeypatch.setattr(ray_executor, "_run_trial_task", trial_task)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        ex = RayExecutor()
        spec = TrialSpec(number=0, config=TrialConfig.from_dict({}), base_model="m", train_file="t", validation_file="v",
                         output_dir="o")
        ex.submit(spec, Slot("cuda", 1, 0.3))
        assert ex.gpus_held[0] is None  # until the task says
        end = time.time() + 20
        while time.time() < end and ex.gpus_held.get(0) is None:
            time.sleep(0.1)
        node_id, gpus = ex.gpus_held[0]
        assert node_id == ray.nodes()[0]["NodeID"] and len(gpus) == 1 and gpus[0] in ("0", "1")
        assert ex.probe_room()  # the other GPU is whole
        assert ex.next_result(timeout=30).number == 0 and 0 not in ex.gpus_held
        ex.close()
    finally:
        ray.shutdown()


def test_a_ray_address_where_no_cluster_answers_is_one_line_in_seconds_and_writes_nothing(tiny_model, tiny_data,
                                                                                         tmp_path):
    """ray.init retried 127.0.0.1:1 for as long as it was let (5 minutes and more, through Ctrl-C), and the journal it
    had written made --resume retry it."""
    import time

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("{epochs}", "1"))
    began = time.monotonic()
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--output_dir", str(tmp_path / "out"),
                                  "--search_space", str(space), "--executor", "ray", "--ray_address", "127.0.0.1:1"])
    assert r.exit_code == 2 and "--ray_address 127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "out").exists() and time.monotonic() - began < 30
    # RAY_ADDRESS, which ray.init joins without --ray_address, is checked the same way (it hung as well)
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--output_dir", str(tmp_path / "out"),
                                  "--search_space", str(space), "--executor", "ray"], env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert r.exit_code == 2 and "RAY_ADDRESS 127.0.0.1:1: no Ray cluster answers" in r.output and "unset RAY_ADDRESS" \
        in r.output and not (tmp_path / "out").exists(), r.output


def test_the_memory_limit_is_the_largest_gpu_ray_can_be_asked_for():
    """A100s of 40 and 80 GiB are one kind to Ray: a trial estimated at 60 GiB passed a limit of 95% of 80 GiB, asked
    for a whole GPU of any kind, and could land on a 40 (its OOM then ruled it out for good)."""
    from moopt.study.placement import ClusterPlacer

    nodes = [{"CPU": 8, "GPU": 4}] * 2
    one_kind = ClusterPlacer(2, nodes, [(80.0, "A100")] * 4 + [(40.0, "A100")] * 4)
    assert one_kind.largest_placeable() == 40.0 and one_kind.fit(30) == (0.79, None)
    two_kinds = ClusterPlacer(2, nodes, [(80.0, "H100")] * 4 + [(40.0, "A100")] * 4)
    assert two_kinds.largest_placeable() == 80.0 and two_kinds.fit(60) == (0.79, "H100")
    assert ClusterPlacer(2, nodes, [(80.0, None)] * 8).largest_placeable() == 80.0


def test_cpu_peaks_measured_in_ray_workers_are_kept_apart(tiny_model, tmp_path):
    """A Ray worker holds ~75 MiB more RSS than moopt's own: with one calibration cache, a probe measured locally
    passed a Ray trial that then went over the budget, and a Ray measure ruled out a configuration that fits locally."""
    from moopt.config import TrialConfig
    from moopt.study.gate import MemoryGate

    t = TrialConfig.from_dict({})
    local = MemoryGate(tiny_model, "cpu", "torch", 1.0, cache_path=tmp_path / "c.json")
    on_ray = MemoryGate(tiny_model, "cpu", "torch", 1.0, cache_path=tmp_path / "c.json", runtime="ray")
    assert on_ray.key(t) == local.key(t) + "|ray"
    assert MemoryGate(tiny_model, "cuda", "torch", 1.0, cache_path=tmp_path / "c.json", runtime="ray").key(t) == \
        MemoryGate(tiny_model, "cuda", "torch", 1.0, cache_path=tmp_path / "c.json").key(t)  # the GPU's own memory
