#!/bin/bash
# cloud-init user_data for a new App Connector VM: stop the connector, fetch its group's key
# from Vault with vault-zpa, start the connector. VAULT_ADDR and the AppRole credentials come
# from your image or instance metadata, never from this file.
set -euo pipefail
export VAULT_ADDR="https://vault.example.com:8200"
export VAULT_ZPA_AUTH_METHOD=approle
export VAULT_ZPA_APPROLE_ROLE_ID_FILE=/etc/vault-zpa/role-id
export VAULT_ZPA_APPROLE_SECRET_ID_FILE=/etc/vault-zpa/secret-id

systemctl stop zpa-connector
/opt/vault-zpa/bin/vault-zpa fetch --association-type CONNECTOR_GRP \
    --group "USA-Connector-Group" --out /opt/zscaler/var/provision_key --mode 0644
systemctl start zpa-connector
