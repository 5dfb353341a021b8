# vault-zpa auditor: metadata and listings of secret/zpa/, never keys.
path "secret/metadata/zpa/*" {
  capabilities = ["read", "list"]
}

# Rotation journals (states, key ids and names; never a key value).
path "secret/data/zpa/_vault-zpa/rotation/*" {
  capabilities = ["read"]
}
