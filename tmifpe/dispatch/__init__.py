"""Dispatch of the DVC stages of the grid to Dask workers (one machine, several, or SLURM).

Light on purpose: importing this package does not import Dask (``stage_support`` imports
:mod:`tmifpe.pipeline.runlog` in every stage process). The engine lives in ``engine``, the
commands in ``cli``.
"""
