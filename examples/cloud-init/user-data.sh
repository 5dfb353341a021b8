#!/bin/bash
# cloud-init user_data for a new App Connector VM: stop the connector, fetch its group's key
# from Vault with a single-use wrapping token, start the connector. No long-lived Vault
# credential is on the VM, in the image or in this file.
#
# Whoever launches the VM (an operator, CI) makes the token just before, with a Vault token
# that may read the group's secret (the vault-zpa daemon's policy will do):
#
#   vault-zpa wrap --association-type CONNECTOR_GRP --group "USA-Connector-Group" \
#       --ttl 30m --output json > wrapped.json
#
# and puts wrapped.json in place of the placeholder inside the WRAPPED heredoc below (it is
# written for Terraform's templatefile(); any templating will do). Give --ttl enough time
# for the VM to boot.
#
# The token works once. Whatever copies of this user-data remain (the instance metadata
# service, /var/lib/cloud) hold a spent token afterwards. If someone redeemed it first, fetch
# fails with one line saying the token was already unwrapped (exit 2) and the connector is
# not started: rotate the group's key (`vault-zpa rotate`) and check Vault's audit log.
#
# AppRole instead: `vault-zpa wrap ... --approle-role NAME` wraps a secret-id, and the fetch
# below adds `--approle-role NAME` with VAULT_ZPA_APPROLE_ROLE_ID_FILE (the role_id, from the
# image: not a secret on its own).
set -euo pipefail
export VAULT_ADDR="https://vault.example.com:8200"
# export VAULT_CACERT=/etc/ssl/certs/vault-ca.pem   # if Vault's CA is not in the system store

umask 077
install -d -m 0700 /run/vault-zpa
# A quoted heredoc: the token goes to a root-only file on tmpfs, never into a command line.
cat > /run/vault-zpa/wrapped.json <<'WRAPPED'
${wrapped_token_json}
WRAPPED

systemctl stop zpa-connector
/opt/vault-zpa/bin/vault-zpa fetch --association-type CONNECTOR_GRP \
    --group "USA-Connector-Group" --out /opt/zscaler/var/provision_key --mode 0644 \
    --wrapped-token-file /run/vault-zpa/wrapped.json
rm -f /run/vault-zpa/wrapped.json
systemctl start zpa-connector
