"""The Textual dashboard: ``advtui`` with no arguments opens it (``advtui.tui.app.run_dashboard``)."""
