"""The torch-free core: what every layer above needs and none of them owns.

- ``paths``: the runs directory, run folders, checkpoint paths, the data root
- ``lifecycle``: a run's record and the one writer of its status
- ``process``: is a recorded process (pid + start time) still alive
- ``defenses``: the defense table (objective + inner maximizer)
- ``attack_specs``: the attack-spec grammar and canonical names
- ``results``: the evaluation results store (flags, min and worst-case summaries)
- ``format``: how values read in the CLI and the dashboard
- ``atomic``: atomic file writes

Nothing here imports torch or ``advtui.engine`` (tests/test_layers.py checks), so listing,
comparing and the dashboard's first paint start fast.
"""
