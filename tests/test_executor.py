from moopt.study.placement import DevicePlacer


def test_gpu_placement_shares_a_gpu_only_when_estimates_fit():
    p = DevicePlacer(parallel=4, gpus=[("0", 80.0), ("1", 40.0)])
    a = p.place(0, 60.0)
    assert a.device == "cuda:0"  # only GPU 0 holds 60 GiB
    b = p.place(1, 30.0)
    assert b.device == "cuda:1"  # GPU 0 has 16 GiB left, GPU 1 has 38
    assert p.place(2, 20.0) is None  # neither has 20 GiB left now: wait
    c = p.place(3, 10.0)
    assert c.device in ("cuda:0", "cuda:1")
    p.release(0)
    assert p.place(2, 20.0).device == "cuda:0"


def test_cpu_slots_split_the_cores():
    p = DevicePlacer(parallel=2, gpus=[])
    s0, s1 = p.place(0), p.place(1)
    assert s0.device == s1.device == "cpu" and s0.threads == max(1, p.cores // 2)
    assert p.place(2) is None and p.free() == 0


def test_a_trial_too_big_for_every_gpu_runs_alone_on_the_largest():
    p = DevicePlacer(parallel=2, gpus=[("0", 24.0), ("1", 48.0)])
    assert p.place(0, 100.0).device == "cuda:1"


def test_trials_split_the_cores_this_process_may_use_not_the_nodes(tmp_path, monkeypatch):
    """A SLURM job or taskset grants some cores of a big node (the affinity mask), a container a CPU quota
    (cgroup cpu.max): os.cpu_count() says the node's, and trials split those between them, oversubscribed."""
    from moopt.study import placement

    monkeypatch.setattr(placement.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(placement.os, "cpu_count", lambda: 128)
    assert placement.usable_cores(tmp_path / "none") == 8  # no cgroup files: the affinity mask
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert placement.usable_cores(tmp_path) == 8  # no quota
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert placement.usable_cores(tmp_path) == 3  # 2.5 CPUs of quota: 3 threads
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert placement.usable_cores(v1) == 4
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert placement.usable_cores(v1) == 8
    monkeypatch.setattr(placement, "usable_cores", lambda: 8)
    assert [s.threads for s in placement.plan_slots(2)] == [4, 4]
    assert placement.DevicePlacer(2, gpus=[]).place(0).threads == 4
