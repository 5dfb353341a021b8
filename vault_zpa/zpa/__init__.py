"""The ZPA source: authentication, clouds, rate limiting, retries and paging over httpx."""
