"""Talk to a Prefect server from a test, in a subprocess so the test process's own Prefect settings
(the ephemeral API other tests use) stay untouched. Prints one JSON object.

  python tests/prefect_api.py trigger DEPLOYMENT [PARAMS_JSON] [N]   start N runs at once, wait for all
  python tests/prefect_api.py run FLOW_RUN_ID                        state, history, parameters, artifacts
  python tests/prefect_api.py deployments                            names of the deployments
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.deployments import run_deployment


async def describe(c, run_id) -> dict:
    fr = await c.read_flow_run(run_id)
    states = await c.read_flow_run_states(run_id)
    arts = await c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {"id": str(run_id), "state": fr.state.name, "message": fr.state.message, "parameters": fr.parameters,
            "history": [s.name for s in sorted(states, key=lambda s: s.timestamp)],
            "artifacts": [{"key": a.key, "description": a.description, "data": a.data} for a in arts]}


async def trigger(name: str, params: dict, n: int, timeout_s: float = 600) -> dict:
    runs = [await run_deployment(name, parameters=params, timeout=0) for _ in range(n)]
    overlap, t0 = False, time.time()
    async with get_client() as c:
        while time.time() - t0 < timeout_s:
            states = [(await c.read_flow_run(r.id)).state for r in runs]
            # the property under test: never two of these runs executing at the same time
            overlap |= sum(s.is_running() for s in states) > 1
            if all(s.is_final() for s in states):
                break
            await asyncio.sleep(0.5)
        return {"overlap": overlap, "seconds": round(time.time() - t0, 1),
                "runs": [await describe(c, r.id) for r in runs]}


async def deployments() -> dict:
    async with get_client() as c:
        return {"deployments": [f"{(await c.read_flow(d.flow_id)).name}/{d.name}"
                                for d in await c.read_deployments()]}


async def main(argv: list[str]) -> dict:
    if argv[0] == "trigger":
        return await trigger(argv[1], json.loads(argv[2]) if len(argv) > 2 else {},
                             int(argv[3]) if len(argv) > 3 else 1)
    if argv[0] == "run":
        async with get_client() as c:
            return await describe(c, argv[1])
    return await deployments()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:])), default=str))
