"""The Session-Buddy insight sink, in named parts.

- :mod:`.tags`: the tag codec (how our insights are marked in Session-Buddy and read back);
- :mod:`.worker`: the private event-loop thread Session-Buddy's blocking calls run on;
- :mod:`.in_process`: the backend on Session-Buddy's DuckDB file (its own adapter);
- :mod:`.mcp_backend`: the backend through Session-Buddy's MCP server;
- :mod:`.sink`: the adapter, :class:`SessionBuddyInsightSink`, and :func:`session_buddy_sink_factory`.
"""

from oneiric_memory.adapters.session_buddy.sink import (
    CATEGORY,
    PROVIDER,
    BacklogProvider,
    SessionBuddyInsightSink,
    session_buddy_sink_factory,
)

__all__ = ["CATEGORY", "PROVIDER", "BacklogProvider", "SessionBuddyInsightSink", "session_buddy_sink_factory"]
