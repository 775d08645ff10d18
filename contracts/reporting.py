"""How a running job reports back: the variables the control plane puts in the Ray job's
environment, and the route the job posts its metric records to (``{step, name, value, time}``).
"""

ENV_API_URL = "LLMFORGE_API_URL"  # where the control plane answers, as the job reaches it
ENV_JOB_ID = "LLMFORGE_JOB_ID"
ENV_JOB_TOKEN = "LLMFORGE_JOB_TOKEN"  # scoped to this one job; it dies when the job ends
METRICS_ROUTE = "/api/v1/jobs/{job_id}/metrics"
