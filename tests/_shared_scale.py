"""The config of the small real scale run the ``shared_scale_run`` fixture (tests/conftest.py) makes once per
test session."""

# One small real scale run shared by test_report_run_files.py, test_report_noise.py and
# test_scale_rows.py (each had a run of its own: about 50 + 42 + 22 s of a default test run).
# The union of what they need: registry merges (task arithmetic, TIES) and a per-task merge
# (EMR), plain and with RHT; correlated pairs; GENOME and Model Swarms, each search cell holding
# both variants; two seeds; the pool analysis and the report. The tests read it; a test that
# changes files works on a copy.
SHARED_SCALE = {
    "evaluation": {"max_samples": 12, "batch_size": 64},
    "scale": {"methods": ["task_arithmetic", "ties", "emr"], "search": ["genome", "swarm"], "seeds": [0, 1],
              "with_rht": True, "k_max": 4, "law_first_k": 3, "pairs": True, "order": "given",
              "hist_samples": 20, "stop_target": "all"},
    "genome": {"population": 3, "generations": 2, "early_stop_iter": 1},
    "swarm": {"max_iter": 2},
    "ray": {"num_actors": 2},
}
