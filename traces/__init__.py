"""KV trace format, recorder and small committed traces (arrives with the KV-retrieval issue)."""
