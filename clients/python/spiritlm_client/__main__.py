from spiritlm_client.cli import main

raise SystemExit(main())
