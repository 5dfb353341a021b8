"""Test doubles shipped with vault-zpa: the ZPA API simulator, the OpenBao launcher and an
in-memory KV store. Public so other people's tests and the demo use the same ones."""
