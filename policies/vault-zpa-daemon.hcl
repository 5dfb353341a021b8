# vault-zpa daemon: sync, prune, rotation, leader lease; secret/zpa/ only.
# Key data: read to compare, create/update with check-and-set, delete = soft delete for --prune.
path "secret/data/zpa/*" {
  capabilities = ["create", "read", "update", "delete"]
}

# custom_metadata (usage, leases, ownership marker; patch = merge, so other keys and the
# secret's own settings survive) and listing for orphans. The rotation journal and the leader
# lease are secrets of their own under _vault-zpa/, covered by the data rule above.
path "secret/metadata/zpa/*" {
  capabilities = ["create", "read", "update", "patch", "list"]
}

# Detect the KV version of the mount.
path "sys/mounts/secret" {
  capabilities = ["read"]
}

# The token's own lookup and renewal (the default policy grants these too).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
