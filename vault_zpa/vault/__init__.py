"""The Vault sink: connection and auth (with lease renewal), KV reads and check-and-set writes."""
