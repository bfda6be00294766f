"""The one error type every checkpoint reader and writer raises."""

from __future__ import annotations


class CheckpointError(ValueError):
  """A checkpoint could not be read or written as asked.

  The message says what was wrong (which file, which parameter, expected and
  found shapes) and what to do about it. Readers never return a partial set of
  parameters: they raise this instead.
  """


def format_list(items: list[str], limit: int = 20) -> str:
  """Formats `items` one per line, indented, cut after `limit` entries."""
  shown = [f"  {item}" for item in items[:limit]]
  if len(items) > limit:
    shown.append(f"  ... and {len(items) - limit} more")
  return "\n".join(shown)
