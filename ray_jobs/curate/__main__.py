"""``python -m ray_jobs.curate --spec URI``: the curate job's entrypoint."""

from ray_jobs import entrypoint
from ray_jobs.curate.job import run
from ray_jobs.curate.spec import CurateSpec

if __name__ == "__main__":
    raise SystemExit(entrypoint.main(CurateSpec, run))
