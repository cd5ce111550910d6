"""The evaluation core: one runner per experiment kind (attack unit, AutoAttack, fast preset,
diagnostics), below every door (``tmifpe.evaluate``, ``tmifpe evaluate``, the DVC stages), each
returning a frame of :mod:`tmifpe.evaluation.schema` under the runtime contract of
:mod:`tmifpe.runtime`."""
