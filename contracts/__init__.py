"""What the control plane (``services``) and the jobs (``ray_jobs``) agree on: the job specs
and the table of job kinds (``jobs``), how a job reports back (``reporting``), and how job files
are read and written by URI (``uri_io``). Neither side imports the other's internals.
"""
