"""A station whose supervisor restarts it, for the kill -9 test (run as a subprocess).

    python tests/updater_station.py ROOT apply TARBALL VERSION COUNTER [--die-after STEP]
    python tests/updater_station.py ROOT start [--die-after STEP] [--health ok|fail|crash]

Update events go to ``ROOT/../events.jsonl`` (the outbox).
``apply`` installs a release and exits 75 (the agent's restart code); ``start`` is one start
of the agent: recovery, then a trial's soak (commit, or rollback and exit 75), then it prints
the birth's ``versions`` and the release it runs, and exits 0. ``--die-after STEP`` is the
test seam: the process sends itself SIGKILL the moment that named step is durable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from kioskfleet.agent.payloads import StationIdentity, birth
from kioskfleet.agent.updater import (
    HealthReport,
    SoakPolicy,
    SoftwareUpdater,
    VerifiedTarget,
)
from kioskfleet.agent.updater.gate import UpdateGate
from kioskfleet.agent.updater.runner import StationUpdates

RESTART = 75
POLICY = SoakPolicy(soak=0.05, interval=0.01, timeout=30.0, max_failures=3, max_starts=3)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("mode", choices=["apply", "start"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--die-after")
    parser.add_argument("--health", choices=["ok", "fail", "crash"], default="ok")
    opts = parser.parse_args()

    def hook(step: str) -> None:
        if step == opts.die_after:
            os.kill(os.getpid(), signal.SIGKILL)

    updater = SoftwareUpdater(opts.root, base_version="0.1.0", policy=POLICY, after_step=hook)
    restarted = False

    async def restart() -> None:
        nonlocal restarted
        restarted = True

    def report(events: list[dict[str, object]]) -> None:
        # the agent's outbox, durable before the updater forgets them
        with (opts.root.parent / "events.jsonl").open("a") as out:
            out.writelines(json.dumps(event) + "\n" for event in events)
            out.flush()
            os.fsync(out.fileno())

    updates = StationUpdates(
        updater, None, UpdateGate(busy=lambda: False), report=report, restart=restart
    )
    if opts.mode == "apply":
        tarball, version, counter = opts.args
        target = VerifiedTarget(Path(tarball), "software", version, int(counter), f"r-{version}")

        async def fetch() -> VerifiedTarget:
            return target

        outcome = asyncio.run(updates.apply_software(fetch, release=target.release))
        print(json.dumps({"outcome": outcome}))
        return RESTART if restarted else 1

    plan = updater.recover()
    updates.flush_reports()  # as the agent does once its outbox is open
    if plan.kind == "restart":
        return RESTART
    if plan.kind == "trial":
        assert plan.trial is not None
        if opts.health == "crash":
            os._exit(3)  # the new release dies before it is healthy
        problems = () if opts.health == "ok" else ("device printer not answering (offline)",)
        outcome = asyncio.run(
            updates.soak(plan.trial, lambda: HealthReport(problems), interval=0.01)
        )
        if outcome == "rolled_back":
            return RESTART
    identity = StationIdentity(
        "kiosk-001",
        "liangxi",
        "s1",
        "subway_station",
        "estation-gen2",
        agent_version=updater.running_version(),
    )
    message = birth(identity, session=1, ts=0.0, keepalive=30, devices={})
    running = updater.running()
    out = {
        "versions": message.versions.model_dump() if message.versions else None,
        "running": running.name if running else None,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
