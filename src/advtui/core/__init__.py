"""The torch-free core: the floor every layer above stands on, importing nothing above it.

- ``errors``: the exceptions every layer raises (one line each for the user)
- ``config``: the run configuration (validated, torch-free)
- ``status``: run and job statuses, their transitions and the resume rule
- ``paths``: the runs directory, run folders, checkpoint paths, the data root, the safe-name rule
- ``process``: is a recorded process (pid + start time) still alive
- ``defenses``: the defense table (objective + inner maximizer)
- ``attack_specs``: the attack-spec grammar and canonical names
- ``events``: each run's events.jsonl (what the trainer streams, what the dashboard reads)
- ``health``: training health checks over those events
- ``format``: how values read in the CLI and the dashboard
- ``atomic``: atomic file writes
- ``memory``: garbage-collector settings for long listings

Nothing here imports torch, ``advtui.engine`` or the store (tests/test_layers.py checks), so
listing, comparing and the dashboard's first paint start fast. The store (``advtui.store``)
sits directly above.
"""
