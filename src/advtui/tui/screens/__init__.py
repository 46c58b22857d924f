"""Screens of the dashboard: main, detail, log, compare, and the modal forms."""
