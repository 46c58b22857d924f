"""The run store: runs, jobs, evaluation results and reproduction plans on disk.

It sits directly above ``advtui.core`` and imports nothing else of advtui: ``registry`` is the
store itself (``Registry``), ``lifecycle`` moves a run between statuses, and ``results`` stores
and reads evaluation results.
"""
