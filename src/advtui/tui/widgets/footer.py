"""The key bindings footer, recomposed once per batch of binding changes."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class BindingsFooter(Footer):
    """Textual's Footer recomposes every key for each binding refresh; a screen starting up
    sends several (focus, screen resume, idle), each costing a full recompose on the way to the
    first paint. Here the refreshes that arrive before the next repaint share one recompose."""

    _recompose_pending = False

    def bindings_changed(self, screen: Screen) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen and not self._recompose_pending:
            self._recompose_pending = True
            self.call_after_refresh(self._recompose_once)

    async def _recompose_once(self) -> None:
        self._recompose_pending = False
        await self.recompose()
