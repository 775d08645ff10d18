"""What the control plane (``services``) and the jobs (``ray_jobs``) agree on: the job specs
and the table of job kinds (``jobs``), and how a job reports back (``reporting``). Job files are
read and written by URI through ``llm.storage``, the one filesystem layer. Neither side
imports the other's internals.
"""
