"""The pipeline around the core: suite configuration and its grid, the cells each DVC stage runs
(attack, AutoAttack, fast preset, diagnostics' and ablations' drivers, model stage and training),
the stage door (params, threads, hash seed, deterministic kernels), progress and atomic writes.

The core it drives (losses, t*, attack engines, precision, verification) lives in
``tmifpe.losses``, ``tmifpe.attacks``, ``tmifpe.precision`` and ``tmifpe.verify`` and imports
nothing from here.
"""
