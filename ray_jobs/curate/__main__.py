"""``python -m ray_jobs.curate --spec URI``: the curate job's entrypoint."""

from contracts.curate import CurateSpec
from ray_jobs import entrypoint
from ray_jobs.curate.job import run

if __name__ == "__main__":
    raise SystemExit(entrypoint.main(CurateSpec, run))
