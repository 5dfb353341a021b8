# Vault Agent on an App Connector host: renders the group's key to the file the connector
# service reads. Auth here is AppRole; any auto_auth method works. The policy it needs is
# `vault-zpa policy render --association-type CONNECTOR_GRP --group "<your group>"`.
pid_file = "/run/vault-agent.pid"

auto_auth {
  method "approle" {
    config = {
      role_id_file_path                   = "/etc/vault-agent/role-id"
      secret_id_file_path                 = "/etc/vault-agent/secret-id"
      remove_secret_id_file_after_reading = false
    }
  }
}

template {
  source      = "/etc/vault-agent/provision_key.ctmpl"
  destination = "/opt/zscaler/var/provision_key"
  perms       = "0644"
  # The connector reads the key only at enrollment; restart it when the key changes before then.
  command     = "systemctl restart zpa-connector"
}
