"""Cove's service layer: what every front end (the CLI, the Streamlit app, the HTTP API, the MCP
server, LangChain) calls, above the two libraries it joins.

`cove` answers and `ingest` builds the library; neither knows the other's entry points or any front
end (an import test keeps it so: `tests/test_layers.py`). This package is where they meet: the
library service (ask, search, list, add, read pages), the chat service and its conversations, and the
integrations with other frameworks. Front ends stay thin: they parse their own input, call this
layer, and render what it returns.
"""
