"""Everything on disk: cache folders (CacheDict), their formats, and in-flight claims.

This layer knows nothing of pydantic, infras or graphs.
"""
