"""The operator's console: web pages served by the admin server, behind the admin token."""

from feedhook.console.views import add_console

__all__ = ["add_console"]
