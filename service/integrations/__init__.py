"""Cove inside other frameworks (LangChain); each integration imports its framework on its own."""
