from vault_zpa.cli import main

main()
