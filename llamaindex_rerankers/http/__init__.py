"""What every reranker that calls a service over HTTP shares: one retry policy (tenacity, with
``Retry-After`` and a deadline) and one background event loop on which the requests run.

Not LLM-specific: the LLM client (:mod:`llamaindex_rerankers.llm.openai_client`) and the rerank
service client (:mod:`llamaindex_rerankers.remote`) both use it, so they retry the same way.
"""
