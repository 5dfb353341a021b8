"""vault-zpa: Zscaler Private Access provisioning keys, kept in HashiCorp Vault / OpenBao KV."""

__version__ = "0.1.0"
