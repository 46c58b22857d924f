"""The run store: runs, jobs, evaluation results and reproduction plans on disk.

It sits directly above ``advtui.core`` and imports nothing else of advtui (tests/test_layers.py
checks). ``registry`` holds ``Registry``, the one way in; ``schema``, ``files``, ``locks``,
``listing``, ``archive`` and ``migrate`` are its parts (what the files are, reading them,
writing them, listing the runs, archiving ended jobs, migrating the single-file registry);
``lifecycle`` is the one writer of a run's status and ``results`` stores evaluation results.
"""
