"""Prefect and Dask glue (DESIGN §7): the library's only package that imports either.

:mod:`.stage` (a stage's flow, its task runner and logs), :mod:`.local_prefect` (the local server and cluster
of ``make demo``), :mod:`.scaleout` (the flows that ``prefect.yaml`` deploys on work pools).
"""
