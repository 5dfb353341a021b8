# vault-zpa auditor: metadata and listings of secret/zpa/, never keys.
path "secret/metadata/zpa/*" {
  capabilities = ["read", "list"]
}
