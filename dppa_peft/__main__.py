from dppa_peft.cli import main

raise SystemExit(main())
