# vault-zpa daemon: sync, prune, rotation, leader lease; secret/zpa/ only.
# Key data: read to compare, create/update with check-and-set, delete = soft delete for --prune.
path "secret/data/zpa/*" {
  capabilities = ["create", "read", "update", "delete"]
}

# custom_metadata (usage, leases, rotation journal, ownership marker) and listing for orphans.
path "secret/metadata/zpa/*" {
  capabilities = ["create", "read", "update", "list"]
}

# Detect the KV version of the mount.
path "sys/mounts/secret" {
  capabilities = ["read"]
}
