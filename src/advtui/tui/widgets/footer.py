"""The key bindings footer of the main screen, drawn as one line of text by one widget."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual import events
from textual.screen import Screen
from textual.widget import Widget


DISABLED = Style(dim=True)  # a binding whose action cannot run now
PALETTE_ROOM = 14  # columns kept for the command palette's key on the right ("│ ^p palette ")


def _entry_width(entry: tuple[str, str, str, bool]) -> int:
    """Columns one binding takes: " key description "."""
    return len(entry[1]) + len(entry[2]) + 3


class BindingsFooter(Widget, can_focus=False):
    """The screen's shown key bindings, as Textual's Footer lists them (key, then what it does;
    the command palette's key on the right), and a click on one presses its key.

    Textual's Footer builds a widget per key and restyles them all on every binding change; with
    the main screen's dozen keys that was a tenth of the dashboard's first paint at 10,000 runs.
    Here a change only redraws this line."""

    COMPONENT_CLASSES = {"footer--key", "footer--description"}
    DEFAULT_CSS = """
    BindingsFooter {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
    }
    BindingsFooter > .footer--key {
        color: $footer-key-foreground;
        background: $footer-key-background;
        text-style: bold;
    }
    BindingsFooter > .footer--description {
        color: $footer-description-foreground;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._spans: list[tuple[int, int, str]] = []  # (first column, end column, key) per binding

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen:
            self.refresh()

    def _shown(self) -> tuple[list[tuple[str, str, str, bool]], tuple[str, str, str, bool] | None]:
        """(key, its display, description, enabled) of each shown binding, once per action as
        Textual's Footer does, and the command palette's binding apart. When they do not all
        fit, the screen's ``FOOTER_FIRST`` actions come first and the rest as far as they fit
        (a narrow terminal must still show how to quit)."""
        app = self.app
        active = self.screen.active_bindings
        palette_key = app.COMMAND_PALETTE_BINDING if app.ENABLE_COMMAND_PALETTE else None
        shown, actions, order = [], set(), []
        for key, (_node, binding, enabled, _tooltip) in active.items():
            if not binding.show or binding.action in actions or key == palette_key:
                continue
            actions.add(binding.action)
            shown.append((binding.key, app.get_key_display(binding), binding.description, enabled))
            order.append(binding.action)
        first = getattr(self.screen, "FOOTER_FIRST", ())
        if first and sum(_entry_width(e) for e in shown) > self.size.width - PALETTE_ROOM:
            rank = {action: i for i, action in enumerate(first)}
            shown = [e for _, e in sorted(zip(order, shown), key=lambda pair: rank.get(pair[0], len(rank)))]
            room = self.size.width - PALETTE_ROOM
            fitting = []
            for entry in shown:
                room -= _entry_width(entry)
                if room < 0:
                    break
                fitting.append(entry)
            shown = fitting
        palette = None
        if palette_key is not None and palette_key in active:
            _node, binding, enabled, _tooltip = active[palette_key]
            palette = (binding.key, app.get_key_display(binding), binding.description, enabled)
        return shown, palette

    def render(self) -> Text:
        key_style = self.get_component_rich_style("footer--key", partial=True)
        text_style = self.get_component_rich_style("footer--description", partial=True)
        shown, palette = self._shown()
        line, spans = Text(no_wrap=True, overflow="ellipsis"), []

        def add(key: str, display: str, description: str, enabled: bool) -> None:
            start = line.cell_len
            dim = Style() if enabled else DISABLED
            line.append(f" {display} ", key_style + dim)
            line.append(f"{description} ", text_style + dim)
            spans.append((start, line.cell_len, key))

        for entry in shown:
            add(*entry)
        if palette is not None:
            width = self.size.width
            tail = Text(no_wrap=True)
            tail.append(f"│ {palette[1]} ", key_style)
            tail.append(f"{palette[2]} ", text_style)
            gap = width - line.cell_len - tail.cell_len
            if gap > 0:
                line.append(" " * gap)
                spans.append((line.cell_len, line.cell_len + tail.cell_len, palette[0]))
                line.append_text(tail)
        self._spans = spans
        return line

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                self.app.simulate_key(key)
                return
