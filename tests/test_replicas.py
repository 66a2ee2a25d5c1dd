"""Two replicas behind a real HAProxy that retries nothing (deploy/replicas.py, `make replicas-demo`): one SIGKILLed
during a bulk run of the real client, then a rolling restart under 16 clients of steady load."""

from __future__ import annotations

from dataclasses import asdict

from deploy.replicas import run_demo


def test_a_dead_replica_loses_no_file_and_a_rolling_restart_fails_no_request(model_store, tmp_path):
    demo = run_demo(model_store, tmp_path, files=500)
    print(asdict(demo))
    assert demo.problems() == []
    kill = demo.kill
    assert kill.exit_status == 0 and kill.rows == kill.files == 500 and kill.duplicate_rows == 0
    # The kill came mid-run, and the replica served again after its restart.
    assert kill.killed_at_responses >= 8 and kill.responses_by_replica["replica1"] > kill.killed_at_responses
    rolling = demo.rolling
    assert rolling.failed_requests == 0 and rolling.requests > 200
    for shutdown in rolling.shutdowns:
        # Not ready at once, still listening for SHUTDOWN_DELAY_S, then a clean exit.
        assert shutdown.exit_status == 0
        assert shutdown.not_ready_after_s is not None and shutdown.not_ready_after_s < 1.0
        assert shutdown.listener_closed_after_s is not None and shutdown.listener_closed_after_s > 1.5
    assert all(count > 0 for count in rolling.responses_by_replica.values())
